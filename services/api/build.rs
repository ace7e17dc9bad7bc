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
            ],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
