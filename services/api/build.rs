fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Ordered maps: the same record always encodes to the same bytes.
        .btree_map(".")
        // Server reflection serves this descriptor set.
        .file_descriptor_set_path(out.join("drover_descriptor.bin"))
        .compile_protos(
            &[
                "../../proto/drover/v1/common.proto",
                "../../proto/drover/v1/spec.proto",
                "../../proto/drover/v1/scheduler.proto",
                "../../proto/drover/v1/agent.proto",
                "../../proto/drover/v1/store.proto",
                "../../proto/drover/v1/auth.proto",
                "../../proto/drover/v1/enroll.proto",
                "../../proto/drover/v1/triggers.proto",
            ],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    commit();
    Ok(())
}

/// The commit being built, for `drover version` (`unknown` outside a git
/// checkout; uncommitted changes are not marked). Built again when HEAD moves.
fn commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DROVER_COMMIT={commit}");
    // Not the index: every `git add` would rebuild every crate.
    for path in ["HEAD", "refs/heads"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
