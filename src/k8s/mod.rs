//! Kubernetes sidecar injection, shared by `idgate inject` (YAML in, YAML out) and
//! `idgate webhook` (AdmissionReview in, JSONPatch out), so both give the same pod spec.
//!
//! Only pod templates annotated `idgate.io/inject: "true"` change; every other document is
//! written back byte for byte, and injecting twice gives the same result as once. This
//! module never talks to an API server and never creates objects: the sidecar's whole
//! config travels in its own container spec.

mod documents;
pub mod server;
pub mod settings;
pub mod sidecar;
pub mod webhook;
mod workload;
pub mod yaml11;

pub use settings::{Settings, SocketSource, DEFAULT_IMAGE};
pub use workload::{inject_kind, inject_object};

/// Why a manifest or a pod could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// An `idgate.io/*` annotation has a value idgate cannot use.
    #[error("annotation {annotation}: {message}")]
    Annotation {
        /// The annotation key.
        annotation: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A pod template is not shaped like one.
    #[error("{field}: {message}")]
    Shape {
        /// Field path inside the object.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The input is not YAML.
    #[error("document {index}: not valid YAML: {message}")]
    Yaml {
        /// 1-based document number in the stream.
        index: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An error inside one object, with the object named.
    #[error("{object}: {source}")]
    Object {
        /// `document N (Kind namespace/name)` or `items[i] (...)`.
        object: String,
        /// The underlying error.
        source: Box<InjectError>,
    },
    /// Rendering or writing YAML failed (a bug, not an input problem).
    #[error("cannot render YAML: {0}")]
    Render(String),
}

/// Injects the sidecar into every annotated pod of a (multi-document) YAML stream.
/// Documents that do not change are returned exactly as written; changed ones are read and
/// written as kubectl reads YAML (1.1, see the `yaml11` module), so they mean the same to it.
pub fn inject_yaml(text: &str) -> Result<String, InjectError> {
    let mut out = String::with_capacity(text.len() * 2);
    for (i, doc) in documents::split(text).iter().enumerate() {
        let yaml_error = |e: serde_yaml_ng::Error| InjectError::Yaml {
            index: i + 1,
            message: e.to_string(),
        };
        let source = doc.source();
        let mut original = yaml11::from_str(&source).map_err(yaml_error)?;
        // `<<:` merge keys (YAML 1.1, which kubectl reads) resolved before annotations
        // are read; a rewritten document comes out with them merged.
        original.apply_merge().map_err(yaml_error)?;
        let mut injected = original.clone();
        inject_object(&mut injected).map_err(|e| InjectError::Object {
            object: format!("document {} ({})", i + 1, workload::describe(&original)),
            source: Box::new(e),
        })?;
        out.push_str(doc.directives);
        if injected == original {
            out.push_str(doc.separator);
            out.push_str(doc.body);
            continue;
        }
        // A rewritten document starts on a line of its own, also when its content shared
        // the separator's line (`--- {kind: Pod}`).
        match doc.separator {
            "" => {}
            line if line.ends_with('\n') => out.push_str(line),
            shared => {
                out.push_str(shared.trim_end());
                out.push('\n');
            }
        }
        out.push_str(leading_comments(doc.body));
        let yaml = yaml11::to_string(&injected, &source)
            .map_err(|e| InjectError::Render(e.to_string()))?;
        out.push_str(&yaml);
        out.push_str(document_end(doc.body));
    }
    Ok(out)
}

/// A closing `...` line and what follows it (comments, blank lines), kept when the rest
/// is rewritten: the next document's directives need it.
fn document_end(body: &str) -> &str {
    let mut start = body.len();
    for line in body.split_inclusive('\n').rev() {
        start -= line.len();
        let blank_or_comment = |t: &str| t.is_empty() || t.starts_with('#');
        if line
            .strip_prefix("...")
            .is_some_and(|rest| blank_or_comment(rest.trim()))
        {
            return &body[start..];
        }
        if !blank_or_comment(line.trim()) {
            break;
        }
    }
    ""
}

/// The comment and blank lines heading a document (kept when the rest is rewritten).
fn leading_comments(body: &str) -> &str {
    let mut end = 0;
    for line in body.split_inclusive('\n') {
        let trimmed = line.trim();
        if !(trimmed.is_empty() || trimmed.starts_with('#')) {
            break;
        }
        end += line.len();
    }
    &body[..end]
}
