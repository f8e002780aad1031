//! Multi-document YAML streams, split and joined without losing a byte of the documents
//! that do not change.
//!
//! A document separator is a line starting with `---` followed by a space or the line end,
//! at column 0 (block scalars are indented, so their content never matches). Each
//! document keeps its own separator line verbatim, comments included, and the directives
//! (`%YAML 1.1`, `%TAG ...`) written before it, which belong to it.

/// One document of a YAML stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// Its directive lines (`%...`, with any comment or blank lines between them and the
    /// separator), empty when it has none.
    pub directives: &'a str,
    /// The separator line that opened it (with its newline), empty for a first document
    /// without one.
    pub separator: &'a str,
    /// The document text up to the next separator.
    pub body: &'a str,
}

impl Document<'_> {
    /// The text to parse: the body, behind its directives when it has any.
    pub fn source(&self) -> std::borrow::Cow<'_, str> {
        match self.directives {
            "" => self.body.into(),
            directives => format!("{directives}---\n{}", self.body).into(),
        }
    }
}

/// Splits a YAML stream into documents; joining every `directives` + `separator` + `body`
/// gives `text` back exactly.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let (mut directives, mut separator) = ("", "");
    let mut body_start = 0;
    // Where the current run of directive (and then comment or blank) lines began.
    let mut directives_start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_separator(line) {
            let end = directives_start.unwrap_or(offset);
            if end > 0 || !separator.is_empty() || !directives.is_empty() {
                documents.push(Document {
                    directives,
                    separator,
                    body: &text[body_start..end],
                });
            }
            directives = &text[end..offset];
            // Content on the separator line (`--- {kind: Pod}`) belongs to the body.
            let kept = separator_len(line);
            separator = &text[offset..offset + kept];
            body_start = offset + kept;
            directives_start = None;
        } else if line.starts_with('%') {
            directives_start.get_or_insert(offset);
        } else if !is_blank_or_comment(line) {
            directives_start = None;
        }
        offset += line.len();
    }
    documents.push(Document {
        directives,
        separator,
        body: &text[body_start..],
    });
    documents
}

fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

/// How much of a separator line is the separator: all of it, unless document content
/// follows `---` on the same line (anything but a comment), which starts at the returned
/// length.
fn separator_len(line: &str) -> usize {
    let rest = &line[3..];
    let content = rest.trim_start_matches([' ', '\t']);
    if is_blank_or_comment(content) {
        line.len()
    } else {
        line.len() - content.len()
    }
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
            .map(|d| format!("{}{}{}", d.directives, d.separator, d.body))
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
            "%YAML 1.1\n---\na: 1\n",
            "--- {a: 1}\n---\tb: 2\n--- # c\n",
            "# c\n%YAML 1.1\n%TAG !e! tag:e.org,2000:\n# d\n--- # x\na: 1\n...\n%YAML 1.1\n---\nb: 2\n",
        ] {
            let docs = split(text);
            assert_eq!(join(&docs), text, "{text:?}");
        }
        assert_eq!(split("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split("---\na: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split("a: 1\n----\nb: 2").len(), 1);
        assert_eq!(split("b: |\n  ---\n").len(), 1);
        let docs = split("--- {a: 1}\n--- # c\nb: 2\n");
        assert_eq!((docs[0].separator, docs[0].body), ("--- ", "{a: 1}\n"));
        assert_eq!((docs[1].separator, docs[1].body), ("--- # c\n", "b: 2\n"));
        let docs = split("%YAML 1.1\n---\na: 1\n...\n%YAML 1.1\n# c\n---\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].directives, "%YAML 1.1\n");
        assert_eq!(docs[0].body, "a: 1\n...\n");
        assert_eq!(docs[1].directives, "%YAML 1.1\n# c\n");
        assert_eq!(docs[1].source(), "%YAML 1.1\n# c\n---\nb: 2\n");
    }
}
