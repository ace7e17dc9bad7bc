use std::io::Write;
use std::path::PathBuf;

use super::{parse_from, ConfigError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(clap::Parser, Debug)]
struct Opts {
    #[arg(long, env = "DROVER_TEST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "DROVER_TEST_CFG_NATS", default_value = "nats://default")]
    nats: String,
    #[arg(long)]
    artifacts: String,
    #[arg(long, value_delimiter = ',', default_value = "docker")]
    executors: Vec<String>,
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long)]
    verbose: bool,
    #[arg(long, default_value_t = 0)]
    simulate_gpus: u32,
}

fn file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("a temp file");
    f.write_all(yaml.as_bytes()).expect("writing the temp file");
    f
}

fn parse(args: &[&str]) -> Result<Opts, ConfigError> {
    parse_from(std::iter::once("prog").chain(args.iter().copied()))
}

const FULL: &str = "nats: nats://file:4222\nartifacts: file:///a\nexecutors: [docker, process]\nlabel: [zone=eu, rack=r1]\nverbose: true\nsimulate_gpus: 2\n";

#[test]
fn the_file_fills_in_what_defaults_would() -> TestResult {
    let f = file(FULL);
    let o = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?])?;
    assert_eq!(o.nats, "nats://file:4222");
    assert_eq!(o.artifacts, "file:///a");
    assert_eq!(o.executors, ["docker", "process"]);
    assert_eq!(o.labels, ["zone=eu", "rack=r1"]);
    assert!(o.verbose);
    assert_eq!(o.simulate_gpus, 2);
    Ok(())
}

#[test]
fn flags_beat_the_file() -> TestResult {
    let f = file(FULL);
    let o = parse(&[
        "--nats",
        "nats://flag",
        "--executors",
        "process",
        "--label",
        "a=b",
        "--config",
        f.path().to_str().ok_or("temp path not UTF-8")?,
    ])?;
    assert_eq!(o.nats, "nats://flag");
    assert_eq!(o.executors, ["process"]);
    assert_eq!(o.labels, ["a=b"]);
    assert_eq!(o.artifacts, "file:///a");
    Ok(())
}

#[test]
fn the_environment_beats_the_file() -> TestResult {
    // The only test that sets this variable.
    std::env::set_var("DROVER_TEST_CFG_NATS", "nats://env");
    let f = file(FULL);
    let o = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?])?;
    std::env::remove_var("DROVER_TEST_CFG_NATS");
    assert_eq!(o.nats, "nats://env");
    Ok(())
}

#[test]
fn without_a_file_nothing_changes() -> TestResult {
    let o = parse(&["--artifacts", "file:///x"])?;
    assert_eq!(o.nats, "nats://default");
    assert_eq!(o.executors, ["docker"]);
    assert!(parse(&[]).is_err(), "--artifacts is still required");
    Ok(())
}

#[test]
fn unknown_keys_are_refused_with_the_known_ones() -> TestResult {
    let f = file("artifacts: file:///a\nnat: nats://typo\n");
    let err = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{msg}");
    assert!(msg.contains("unknown key `nat`"), "{msg}");
    assert!(
        msg.contains(f.path().to_str().ok_or("temp path not UTF-8")?),
        "{msg}"
    );
    assert!(
        msg.contains("known: artifacts, executors, label, nats, simulate-gpus, verbose"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn file_values_go_through_the_flags_own_validation() -> TestResult {
    let f = file("artifacts: file:///a\nsimulate-gpus: many\n");
    let msg = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--simulate-gpus"), "{msg}");
    assert!(msg.contains("many"), "{msg}");
    Ok(())
}

#[test]
fn malformed_files_name_the_file_and_key() -> TestResult {
    let list = file("artifacts: [a, b]\n");
    let msg = parse(&[
        "--config",
        list.path().to_str().ok_or("temp path not UTF-8")?,
    ])
    .unwrap_err()
    .to_string();
    assert!(msg.contains("key `artifacts`: takes one value"), "{msg}");

    let not_map = file("- nats\n");
    let msg = parse(&[
        "--config",
        not_map.path().to_str().ok_or("temp path not UTF-8")?,
    ])
    .unwrap_err()
    .to_string();
    assert!(msg.contains("not a mapping"), "{msg}");

    let msg = parse(&["--config", "/nonexistent/drover.yaml"])
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("--config /nonexistent/drover.yaml: "),
        "{msg}"
    );

    let flag = file("artifacts: file:///a\nverbose: yes please\n");
    let msg = parse(&[
        "--config",
        flag.path().to_str().ok_or("temp path not UTF-8")?,
    ])
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("key `verbose`: expected true or false"),
        "{msg}"
    );
    Ok(())
}

/// The message `yaml` as a config file is refused with.
fn file_error(yaml: &str) -> Result<String, Box<dyn std::error::Error>> {
    let f = file(yaml);
    let path = f.path().to_str().ok_or("temp path not UTF-8")?;
    match parse(&["--config", path]) {
        Ok(opts) => Err(format!("accepted: {opts:?}").into()),
        Err(e) => Ok(e.to_string().replace(path, "FILE")),
    }
}

#[test]
fn yaml_1_1_booleans_are_not_booleans() -> TestResult {
    // YAML 1.2: only true/false (any case) are booleans.
    for word in ["yes", "no", "on", "off"] {
        assert_eq!(
            file_error(&format!("artifacts: file:///a\nverbose: {word}\n"))?,
            "--config FILE: key `verbose`: expected true or false"
        );
    }
    let f = file("artifacts: file:///a\nverbose: True\n");
    let opts = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?])?;
    assert!(opts.verbose);
    Ok(())
}

#[test]
fn numbers_with_leading_zeros_or_underscores_stay_as_written() -> TestResult {
    // `0755` is not octal (YAML 1.2) nor 755: the flag's parser sees the text.
    let f = file("artifacts: '0'\nnats: 0755\nlabel: [1_000, 0x10, 1.50]\n");
    let opts = parse(&["--config", f.path().to_str().ok_or("temp path not UTF-8")?])?;
    assert_eq!(opts.nats, "0755");
    // Other numbers are read as numbers, as before.
    assert_eq!(opts.labels, ["1_000", "16", "1.5"]);
    Ok(())
}

#[test]
fn bad_yaml_is_refused_with_its_line_and_column() -> TestResult {
    assert_eq!(
        file_error("artifacts: [a\n")?,
        "--config FILE: not a YAML mapping of flag names to values: unclosed bracket '[' at line 1 column 12"
    );
    let msg = file_error("nats: a\nnats: b\n")?;
    assert!(
        msg.contains("duplicate") && msg.contains("nats") && msg.contains("at line 2 column 1"),
        "{msg}"
    );
    Ok(())
}
