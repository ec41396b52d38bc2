//! Secret files named by the configuration (`cluster.auth_key_file`,
//! `linkage.key_file`, `linkage.guests[].key_file`): read with the same
//! rules wherever they are used.

use std::path::Path;

/// The fewest bytes a secret may have, once surrounding whitespace is
/// trimmed.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Unreadable.
    #[error("cannot read the {what} {path}")]
    Read {
        /// What the secret is for (`cluster key`, `linkage key`...).
        what: &'static str,
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Readable by others than its owner.
    #[error(
        "the {what} {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Mode {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// Too short to be a secret.
    #[error("the {what} {path} is shorter than {MIN_SECRET_BYTES} bytes")]
    Short {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: String,
    },
}

/// Read the secret in `path` (the `what` of the configuration): mode 0600
/// or stricter, at least [`MIN_SECRET_BYTES`] once surrounding whitespace
/// is trimmed. Returns the trimmed bytes.
///
/// # Errors
/// Unreadable, readable by group or others, or too short.
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<Vec<u8>, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.display().to_string();
    let read = |source| SecretFileError::Read {
        what,
        path: name.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode {
            what,
            path: name,
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SecretFileError::Short { what, path: name });
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn a_secret_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let good = write(dir.path(), "good", "  0123456789abcdef\n", 0o600);
        assert_eq!(
            read_secret_file("linkage key", &good).ok().as_deref(),
            Some(&b"0123456789abcdef"[..])
        );
        let open = write(dir.path(), "open", "0123456789abcdef", 0o644);
        let e = read_secret_file("linkage key", &open).err();
        assert!(matches!(e, Some(SecretFileError::Mode { mode: 0o644, .. })));
        assert!(e.is_some_and(|e| e.to_string().contains("chmod 600")));
        let short = write(dir.path(), "short", "0123456789\n", 0o600);
        assert!(matches!(
            read_secret_file("linkage key", &short),
            Err(SecretFileError::Short { .. })
        ));
        assert!(matches!(
            read_secret_file("linkage key", &dir.path().join("missing")),
            Err(SecretFileError::Read { .. })
        ));
    }
}
