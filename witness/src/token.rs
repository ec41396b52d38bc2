//! The bearer token shared by the witness and the cluster nodes: reading it
//! from its file (which must be private to its owner), and checking that it
//! can travel in an `Authorization` header.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be opened or read.
    #[error("cannot read token file {}", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or other users have some access to the file.
    #[error(
        "token file {} is accessible by group or other users (mode {mode:04o}); make it private to its owner: chmod 600 {}",
        path.display(),
        path.display()
    )]
    NotPrivate {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is empty or has characters a bearer token cannot have.
    #[error("token in {}: {reason}", path.display())]
    Invalid {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a token is not usable, if it is not: it must be non-empty visible
/// ASCII (no spaces or control characters), as an `Authorization: Bearer`
/// header needs.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces");
    }
    Ok(())
}

/// Read the token from `path`, trimming surrounding whitespace. The file
/// must give no access to group or other users (mode `0600` or stricter).
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    // The mode of the file actually opened, not of whatever the path names
    // by the time it is checked.
    let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::NotPrivate {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    let token = text.trim();
    check_token(token).map_err(|reason| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    })?;
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn reads_and_trims_a_private_token() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(dir.path(), "  s3cr3t-T0ken\n", 0o600);
        let token = read_token_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token, "s3cr3t-T0ken");
        let path = write(dir.path(), "s3cr3t", 0o400);
        assert!(read_token_file(&path).is_ok());
    }

    #[test]
    fn refuses_a_file_others_can_access() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for mode in [0o640, 0o604, 0o644, 0o620, 0o602] {
            let path = write(dir.path(), "s3cr3t", mode);
            let err = read_token_file(&path).err();
            let Some(TokenError::NotPrivate { mode: seen, .. }) = err else {
                panic!("mode {mode:o} accepted or wrong error: {err:?}");
            };
            assert_eq!(seen, mode);
            let text = format!("{}", TokenError::NotPrivate { path, mode });
            assert!(text.contains("chmod 600"), "{text}");
        }
    }

    #[test]
    fn refuses_empty_or_unprintable_tokens_and_missing_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for text in ["", " \n\t", "two words", "bad\u{7}bell", "nön-ascii"] {
            let path = write(dir.path(), text, 0o600);
            let err = read_token_file(&path).err();
            assert!(
                matches!(err, Some(TokenError::Invalid { .. })),
                "{text:?}: {err:?}"
            );
        }
        let err = read_token_file(&dir.path().join("absent")).err();
        assert!(matches!(err, Some(TokenError::Read { .. })), "{err:?}");
    }
}
