//! Multi-document YAML streams, split and joined without losing a byte of the documents
//! that do not change.
//!
//! A document separator is a line starting with `---` followed by a space or the line end,
//! at column 0 (block scalars are indented, so their content never matches). Each
//! document keeps its own separator line verbatim, comments included.

/// One document of a YAML stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// The separator line that opened it (with its newline), empty for a first document
    /// without one.
    pub separator: &'a str,
    /// The document text up to the next separator.
    pub body: &'a str,
}

/// Splits a YAML stream into documents; joining every `separator` + `body` gives `text`
/// back exactly.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut separator = "";
    let mut body_start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_separator(line) {
            if offset > 0 || !separator.is_empty() {
                documents.push(Document {
                    separator,
                    body: &text[body_start..offset],
                });
            }
            separator = &text[offset..offset + line.len()];
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(Document {
        separator,
        body: &text[body_start..],
    });
    documents
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(docs: &[Document<'_>]) -> String {
        docs.iter()
            .map(|d| format!("{}{}", d.separator, d.body))
            .collect()
    }

    #[test]
    fn splits_and_joins_exactly() {
        for text in [
            "",
            "a: 1\n",
            "---\na: 1\n",
            "a: 1\n---\nb: 2\n",
            "--- # first\na: 1\n--- \nb: |\n  ---\n  x\n---\n",
            "a: 1\n----\nb: 2",
        ] {
            let docs = split(text);
            assert_eq!(join(&docs), text, "{text:?}");
        }
        assert_eq!(split("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split("---\na: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split("a: 1\n----\nb: 2").len(), 1);
        assert_eq!(split("b: |\n  ---\n").len(), 1);
    }
}
