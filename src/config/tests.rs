//! Whole configs through [`Config::from_source`]: values refused where they are written
//! (file, line and field).

use super::*;

/// Lines 1-3.
const IDENTITY: &str = "[identity]\nsource = \"spire\"\nsocket = \"unix:///run/agent.sock\"\n";

/// Five lines: `[[outbound]]`, name, listen, target, server_ids.
const OUTBOUND: &str = "[[outbound]]\nname = \"out\"\nlisten = \"127.0.0.1:15001\"\ntarget = \"peer:8443\"\nserver_ids = [\"spiffe://example.org/x\"]\n";

/// Five lines: `[[inbound]]`, name, listen, upstream (the fourth), policy.
fn inbound() -> String {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/billing-policy.toml");
    format!(
        "[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:8443\"\nupstream = \"http://127.0.0.1:8080\"\npolicy = {:?}\n",
        policy.display().to_string()
    )
}

fn load(text: &str) -> Result<Config, FileError> {
    Config::from_source(&SourceFile {
        path: "dir/idgate.toml".into(),
        text: text.into(),
    })
}

/// Asserts `text` is refused at `line`, naming `field`, with `message` in the error.
#[track_caller]
fn assert_refused(text: &str, line: usize, field: &str, message: &str) {
    let err = match load(text) {
        Ok(_) => panic!("accepted, expected {field} refused:\n{text}"),
        Err(err) => err,
    };
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(line), Some(field)),
        "{err}\n{text}"
    );
    assert!(err.message.contains(message), "{err}\n{text}");
    assert!(
        err.to_string()
            .starts_with(&format!("dir/idgate.toml:{line}: {field}: ")),
        "{err}"
    );
}

#[test]
fn listener_errors_name_the_line_of_their_key() {
    let inbound = inbound();
    // protocol = "tcp" with an http:// upstream: the upstream's line (7), not [[inbound]]'s.
    assert_refused(
        &format!("{IDENTITY}{inbound}protocol = \"tcp\"\n"),
        7,
        "inbound[0].upstream",
        "tcp://host:port",
    );
    assert_refused(
        &format!("{IDENTITY}{OUTBOUND}").replace("[\"spiffe://example.org/x\"]", "[]"),
        8,
        "outbound[0].server_ids",
        "at least one SPIFFE ID",
    );
    // A second listener (lines 9-13) with the first one's name, then with its address.
    let twice = format!("{IDENTITY}{inbound}{inbound}");
    let other_port = twice.replacen("127.0.0.1:8443", "127.0.0.1:8444", 1);
    assert_refused(
        &other_port,
        10,
        "inbound[1].name",
        "duplicate listener name",
    );
    let other_name = twice.replacen("\"api\"", "\"api2\"", 1);
    assert_refused(
        &other_name,
        11,
        "inbound[1].listen",
        "used by another listener",
    );
    let twice = format!("{IDENTITY}{OUTBOUND}{OUTBOUND}");
    let other_port = twice.replacen("127.0.0.1:15001", "127.0.0.1:15002", 1);
    assert_refused(
        &other_port,
        10,
        "outbound[1].name",
        "duplicate listener name",
    );
    let other_name = twice.replacen("\"out\"", "\"out2\"", 1);
    assert_refused(
        &other_name,
        11,
        "outbound[1].listen",
        "used by another listener",
    );
}

#[test]
fn identity_errors_name_the_line_of_their_key() {
    assert_refused(
        &format!("{IDENTITY}[identity.federation]\n\"partner.org\" = \"partner.pem\"\n{OUTBOUND}"),
        4,
        "identity.federation",
        "only for source = \"files\"",
    );
    assert_refused(
        &format!("{IDENTITY}federation = {{ \"partner.org\" = \"partner.pem\" }}\n{OUTBOUND}"),
        4,
        "identity.federation",
        "only for source = \"files\"",
    );
    // A missing key has no line of its own: the table's.
    assert_refused(
        &format!("\n[identity]\nsource = \"files\"\n{OUTBOUND}"),
        2,
        "identity.cert",
        "required",
    );
}
