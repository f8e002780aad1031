//! Whole configs through [`Config::from_source`]: values refused where they are written
//! (file, line and field), and the bounds that keep every value safe to run with.

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

#[track_caller]
fn assert_loads(text: &str) -> Config {
    load(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const TIMEOUTS: [&str; 7] = [
    "handshake",
    "header",
    "idle",
    "connect",
    "response",
    "body",
    "drain",
];

/// Longer than a year, and (the first three) too long for a `u64` of seconds or for an
/// `Instant`: each used to load and then panic when a connection came.
const TOO_LONG: [&str; 6] = [
    "18446744073709551615s",
    "307445734561825861m",
    "5124095576030431h",
    "99999999999999999999ms",
    "8761h",
    "31536001s",
];

#[test]
fn durations_longer_than_a_year_are_refused_where_written() {
    let inbound = inbound();
    for value in TOO_LONG {
        for key in TIMEOUTS {
            // As a table of its own, and inline on an outbound listener.
            assert_refused(
                &format!("{IDENTITY}{inbound}[inbound.timeouts]\n{key} = \"{value}\"\n"),
                10,
                &format!("inbound[0].timeouts.{key}"),
                "at most 365 days",
            );
            assert_refused(
                &format!("{IDENTITY}{OUTBOUND}timeouts = {{ {key} = \"{value}\" }}\n"),
                9,
                &format!("outbound[0].timeouts.{key}"),
                "at most 365 days",
            );
        }
        assert_refused(
            &format!("{IDENTITY}{inbound}[inbound.limits]\nmax_connection_age = \"{value}\"\n"),
            10,
            "inbound[0].limits.max_connection_age",
            "at most 365 days",
        );
        for key in ["expiry_margin", "max_bundle_age"] {
            assert_refused(
                &format!("{IDENTITY}{key} = \"{value}\"\n{OUTBOUND}"),
                4,
                &format!("identity.{key}"),
                "at most 365 days",
            );
        }
    }
}

#[test]
fn durations_up_to_a_year_load() {
    for value in ["8760h", "525600m", "31536000s", "31536000000ms"] {
        let config = assert_loads(&format!(
            "{IDENTITY}expiry_margin = \"{value}\"\nmax_bundle_age = \"{value}\"\n{}timeouts = {{ handshake = \"{value}\", header = \"{value}\", idle = \"{value}\", connect = \"{value}\", response = \"{value}\", body = \"{value}\", drain = \"{value}\" }}\nlimits = {{ max_connection_age = \"{value}\" }}\n",
            inbound()
        ));
        let year = std::time::Duration::from_secs(365 * 86_400);
        let t = config.inbound[0].timeouts;
        assert!(
            [
                t.handshake,
                t.header,
                t.idle,
                t.connect,
                t.response,
                t.body,
                t.drain
            ]
            .iter()
            .all(|d| d.0 == year),
            "{t:?}"
        );
        assert_eq!(
            config.inbound[0].limits.max_connection_age,
            Some(Seconds(year))
        );
    }
}

#[test]
fn zero_timeouts_that_would_fail_every_connection_are_refused() {
    for value in ["0s", "0ms"] {
        for key in ["handshake", "header", "idle", "connect", "response", "body"] {
            assert_refused(
                &format!("{IDENTITY}{OUTBOUND}timeouts = {{ {key} = \"{value}\" }}\n"),
                9,
                &format!("outbound[0].timeouts.{key}"),
                "more than 0",
            );
        }
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}limits = {{ max_connection_age = \"{value}\" }}\n"),
            9,
            "outbound[0].limits.max_connection_age",
            "more than 0",
        );
        // No drain: connections are closed at once on SIGTERM.
        let config = assert_loads(&format!(
            "{IDENTITY}expiry_margin = \"{value}\"\n{OUTBOUND}timeouts = {{ drain = \"{value}\" }}\n"
        ));
        assert_eq!(config.drain_timeout(), std::time::Duration::ZERO);
    }
}

#[test]
fn counts_out_of_range_are_refused_where_written() {
    let cases = [
        ("max_connections", "9223372036854775807", "1 to 1048576"),
        ("max_connections", "1048577", "1 to 1048576"),
        ("max_connections", "0", "1 to 1048576"),
        ("max_header_bytes", "0", "1024 to 8388608"),
        ("max_header_bytes", "1023", "1024 to 8388608"),
        ("max_header_bytes", "8388609", "1024 to 8388608"),
        ("max_header_bytes", "9223372036854775807", "1024 to 8388608"),
        ("max_concurrent_streams", "0", "1 to 2147483647"),
        ("max_concurrent_streams", "2147483648", "1 to 2147483647"),
    ];
    let inbound = inbound();
    for (key, value, range) in cases {
        assert_refused(
            &format!("{IDENTITY}{inbound}[inbound.limits]\n{key} = {value}\n"),
            10,
            &format!("inbound[0].limits.{key}"),
            range,
        );
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}limits = {{ {key} = {value} }}\n"),
            9,
            &format!("outbound[0].limits.{key}"),
            range,
        );
    }
    for workers in ["1025", "9223372036854775807"] {
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}[runtime]\nworkers = {workers}\n"),
            10,
            "runtime.workers",
            "1 to 1024",
        );
    }
}

#[test]
fn counts_at_their_bounds_load() {
    for (connections, header, streams, workers) in
        [(1, 1024, 1, 1), (1_048_576, 8_388_608, 2_147_483_647, 1024)]
    {
        let config = assert_loads(&format!(
            "{IDENTITY}{OUTBOUND}limits = {{ max_connections = {connections}, max_header_bytes = {header}, max_concurrent_streams = {streams} }}\n[runtime]\nworkers = {workers}\n"
        ));
        let limits = config.outbound[0].limits;
        assert_eq!(
            (
                limits.max_connections,
                limits.max_header_bytes,
                limits.max_concurrent_streams,
                config.runtime.workers.get()
            ),
            (connections, header, streams, workers)
        );
    }
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
    for (level, message) in [
        ("debugg", "\"debugg\" is not a level"),
        ("idgate=debug,nonsense", "\"nonsense\" is not a level"),
        ("idgate==", "RUST_LOG syntax"),
    ] {
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}[log]\nlevel = {level:?}\n"),
            10,
            "log.level",
            message,
        );
    }
    for (decisions, message) in [
        ("", "empty"),
        (
            "/nonexistent/dir/d.log",
            "/nonexistent/dir/d.log: its directory does not exist",
        ),
    ] {
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}[log]\ndecisions = {decisions:?}\n"),
            10,
            "log.decisions",
            message,
        );
    }
    let ok = load(&format!(
        "{IDENTITY}{OUTBOUND}[log]\nlevel = \"idgate=debug, INFO\"\ndecisions = \"/tmp/d.log\"\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
    assert_refused(
        &format!("{IDENTITY}spiffe_id = \"spiffe://example.org\"\n{OUTBOUND}"),
        4,
        "identity.spiffe_id",
        "spiffe://example.org names a trust domain; an SVID's ID has a path",
    );
    assert_refused(
        &format!("{IDENTITY}{OUTBOUND}").replace("[\"spiffe://example.org/x\"]", "[]"),
        8,
        "outbound[0].server_ids",
        "at least one SPIFFE ID",
    );
    assert_refused(
        &format!("{IDENTITY}{OUTBOUND}").replace(
            "[\"spiffe://example.org/x\"]",
            "[\"spiffe://example.org/x\", \"spiffe://example.org\"]",
        ),
        8,
        "outbound[0].server_ids",
        "spiffe://example.org names a trust domain, which no server presents",
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
    // A wildcard overlaps every address of its port (binding both fails), and the admin
    // listener's address is taken too, the default one included.
    let listening_on = |first: &str, second: &str| {
        other_name
            .replacen("127.0.0.1:15001", "@1", 1)
            .replacen("127.0.0.1:15001", "@2", 1)
            .replace("@1", first)
            .replace("@2", second)
    };
    for (first, second, owner) in [
        (
            "0.0.0.0:15001",
            "127.0.0.1:15001",
            "outbound[0] listens on 0.0.0.0:15001",
        ),
        (
            "127.0.0.1:15001",
            "[::]:15001",
            "outbound[0] listens on 127.0.0.1:15001",
        ),
    ] {
        assert_refused(
            &listening_on(first, second),
            11,
            "outbound[1].listen",
            owner,
        );
    }
    let admin = "the admin listener ([admin] listen) listens on";
    assert_refused(
        &listening_on("127.0.0.1:15000", "127.0.0.1:15001"),
        6,
        "outbound[0].listen",
        &format!("{admin} 127.0.0.1:15000"),
    );
    let wide_admin = format!("{IDENTITY}{OUTBOUND}[admin]\nlisten = \"0.0.0.0:15001\"\n");
    assert_refused(
        &wide_admin,
        6,
        "outbound[0].listen",
        &format!("{admin} 0.0.0.0:15001"),
    );
    assert!(load(&listening_on("127.0.0.1:15001", "[::1]:15001")).is_ok());
    assert!(load(&listening_on("0.0.0.0:15001", "[::1]:15001")).is_ok());
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

/// `[[inbound]]` with `protocol = "tcp"` (the ninth line) in front of a database, judged by
/// `policy`.
fn tcp_inbound(policy: &Path) -> String {
    format!(
        "[[inbound]]\nname = \"db\"\nlisten = \"127.0.0.1:8443\"\nupstream = \"tcp://127.0.0.1:5432\"\npolicy = {:?}\nprotocol = \"tcp\"\n",
        policy.display().to_string()
    )
}

#[test]
fn timeout_keys_a_listener_would_not_use_are_refused_where_written() {
    for protocol in ["http", "tcp"] {
        assert_refused(
            &format!("{IDENTITY}{OUTBOUND}protocol = \"{protocol}\"\ntimeouts = {{ handshake = \"5s\" }}\n"),
            10,
            "outbound[0].timeouts.handshake",
            "does not apply to an outbound",
        );
    }
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), "default = \"allow\"\n").unwrap();
    let inbound = tcp_inbound(policy.path());
    for key in ["header", "response", "body"] {
        assert_refused(
            &format!(
                "{IDENTITY}{OUTBOUND}protocol = \"tcp\"\n[outbound.timeouts]\n{key} = \"5s\"\n"
            ),
            11,
            &format!("outbound[0].timeouts.{key}"),
            "does not apply to an outbound protocol = \"tcp\" listener",
        );
        assert_refused(
            &format!("{IDENTITY}{inbound}timeouts = {{ idle = \"1m\", {key} = \"5s\" }}\n"),
            10,
            &format!("inbound[0].timeouts.{key}"),
            "does not apply to an inbound protocol = \"tcp\" listener",
        );
    }
    // What each kind uses loads.
    assert_loads(&format!(
        "{IDENTITY}{inbound}timeouts = {{ handshake = \"1s\", idle = \"1s\", connect = \"1s\", drain = \"1s\" }}\n"
    ));
    assert_loads(&format!(
        "{IDENTITY}{OUTBOUND}protocol = \"tcp\"\ntimeouts = {{ idle = \"1s\", connect = \"1s\", drain = \"1s\" }}\n"
    ));
}

#[test]
fn limit_keys_a_tcp_listener_would_not_use_are_refused_where_written() {
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), "default = \"allow\"\n").unwrap();
    let inbound = tcp_inbound(policy.path());
    for (key, value, why) in [
        (
            "max_header_bytes",
            "65536",
            "it reads no HTTP request headers",
        ),
        (
            "max_concurrent_streams",
            "100",
            "it carries no HTTP/2 streams",
        ),
    ] {
        assert_refused(
            &format!(
                "{IDENTITY}{OUTBOUND}protocol = \"tcp\"\n[outbound.limits]\n{key} = {value}\n"
            ),
            11,
            &format!("outbound[0].limits.{key}"),
            &format!("does not apply to an outbound protocol = \"tcp\" listener: {why}"),
        );
        assert_refused(
            &format!("{IDENTITY}{inbound}limits = {{ max_connections = 10, {key} = {value} }}\n"),
            10,
            &format!("inbound[0].limits.{key}"),
            &format!("does not apply to an inbound protocol = \"tcp\" listener: {why}"),
        );
        // HTTP listeners use both.
        assert_loads(&format!(
            "{IDENTITY}{OUTBOUND}limits = {{ {key} = {value} }}\n"
        ));
    }
    // What a TCP listener uses loads.
    let limits = "limits = { max_connections = 10, max_connection_age = \"1h\" }";
    let config = assert_loads(&format!(
        "{IDENTITY}{inbound}{limits}\n{OUTBOUND}protocol = \"tcp\"\n{limits}\n"
    ));
    for limits in [config.inbound[0].limits, config.outbound[0].limits] {
        assert_eq!(limits.max_connections, 10);
        assert_eq!(
            limits.max_connection_age.map(|age| age.0),
            Some(std::time::Duration::from_secs(3600))
        );
    }
}

#[test]
fn tcp_listeners_idle_for_an_hour_unless_told_otherwise() {
    use std::time::Duration;
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), "default = \"allow\"\n").unwrap();
    let inbound = tcp_inbound(policy.path());
    let idle = |text: String| {
        let config = assert_loads(&text);
        let listeners = config.inbound.iter().map(|l| l.timeouts.idle.0);
        listeners
            .chain(config.outbound.iter().map(|l| l.timeouts.idle.0))
            .collect::<Vec<_>>()
    };
    let hour = Duration::from_secs(3600);
    assert_eq!(
        idle(format!("{IDENTITY}{inbound}{OUTBOUND}protocol = \"tcp\"\n")),
        [hour, hour]
    );
    assert_eq!(
        idle(format!(
            "{IDENTITY}{inbound}timeouts = {{ idle = \"10m\" }}\n{OUTBOUND}protocol = \"tcp\"\ntimeouts = {{ idle = \"2h\" }}\n"
        )),
        [Duration::from_secs(600), 2 * hour]
    );
    // HTTP keeps its 90 s.
    assert_eq!(
        idle(format!("{IDENTITY}{OUTBOUND}")),
        [Duration::from_secs(90)]
    );
}
