//! Diagnostics: every configuration error names the file, line, column and
//! dotted key path, and all of them are reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file, as it was named to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path, arrays as `[index]` (0-based): `groups[0].resources[1].address`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// All the problems found in one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A key path being built while walking the document.
pub(crate) fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else if rest.is_empty() {
        prefix.to_owned()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// Where each key path of a parsed document sits, and how to turn byte
/// offsets into lines and columns.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    file: &'a str,
    src: &'a str,
    line_starts: Vec<usize>,
    spans: BTreeMap<String, Range<usize>>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a str, src: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            src,
            line_starts,
            spans: BTreeMap::new(),
        }
    }

    /// Record where the value at `path` sits.
    pub(crate) fn record(&mut self, path: String, span: Range<usize>) {
        self.spans.entry(path).or_insert(span);
    }

    /// A diagnostic at a byte offset.
    pub(crate) fn at_offset(&self, offset: usize, key: &str, message: &str) -> Diagnostic {
        let offset = offset.min(self.src.len());
        let line_idx = self
            .line_starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_idx).copied().unwrap_or(0);
        let column = self
            .src
            .get(line_start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        Diagnostic {
            file: self.file.to_owned(),
            line: line_idx + 1,
            column,
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }

    /// A diagnostic at the value of `key`, or at its nearest recorded
    /// ancestor when the key itself is absent (a missing key is reported
    /// where its table starts).
    pub(crate) fn at_key(&self, key: &str, message: &str) -> Diagnostic {
        let mut probe = key;
        loop {
            if let Some(span) = self.spans.get(probe) {
                return self.at_offset(span.start, key, message);
            }
            match probe.rfind(['.', '[']) {
                Some(i) => probe = &probe[..i],
                None => return self.at_offset(0, key, message),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "a = 1\nbé = 2\n\nc = 3";
        let map = SourceMap::new("f.toml", src);
        let at = |o| {
            let d = map.at_offset(o, "", "");
            (d.line, d.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(6), (2, 1));
        // `=` after the two-character key `bé` (é is two bytes).
        assert_eq!(at(10), (2, 4));
        assert_eq!(at(src.len()), (4, 6));
    }

    #[test]
    fn missing_keys_point_at_their_nearest_ancestor() {
        let mut map = SourceMap::new("f.toml", "x\ny\nz");
        map.record("groups[1]".into(), 2..3);
        let d = map.at_key("groups[1].resources[0].name", "m");
        assert_eq!((d.line, d.key.as_str()), (2, "groups[1].resources[0].name"));
        assert_eq!(map.at_key("other", "m").line, 1);
    }

    #[test]
    fn paths_join_keys_and_indexes() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "[0]"), "a[0]");
        assert_eq!(join("a[0]", "b"), "a[0].b");
        assert_eq!(join("a", ""), "a");
    }
}
