//! `drover agent enroll ID [--out DIR]` and `drover nats-config`: agents'
//! NATS identities (admin). The scheduler makes the NKey and keeps only its
//! public half; the seed is shown here once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use drover_api::nats_connect;
use drover_api::pb;
use drover_api::pb::agents_client::AgentsClient;

/// The seed file `--out DIR` writes for agent `id` (what its --nats-creds reads).
pub fn creds_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.nkey"))
}

/// Enrolls agent `id`: prints its seed file and its nats-server entry, or
/// with `out` writes them under that directory (the seed mode 0600).
pub async fn enroll(
    client: &mut AgentsClient<crate::connect::Svc>,
    id: String,
    replace: bool,
    out: Option<PathBuf>,
) -> Result<()> {
    let r = client
        .enroll_agent(pb::EnrollAgentRequest {
            agent_id: id.clone(),
            replace,
        })
        .await?
        .into_inner();
    let creds = nats_connect::seed_file(&format!("drover agent {id}"), &r.seed);
    let public_key = r.agent.map(|a| a.public_key).unwrap_or_default();
    let Some(dir) = out else {
        print!("{creds}");
        if r.authorization.is_empty() {
            println!("# nats-server: add this entry (public key {public_key}) to `authorization.users`, then reload it.");
            print!("{}", r.user_entry);
        } else {
            println!("# nats-server: the authorization block, with this agent (public key {public_key}); reload it after.");
            print!("{}", r.authorization);
        }
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let creds_file = creds_path(&dir, &id);
    nats_connect::write_secret(&creds_file, &creds)
        .with_context(|| format!("writing {}", creds_file.display()))?;
    let entry_file = dir.join(format!("{id}.nats-user.conf"));
    std::fs::write(&entry_file, &r.user_entry)
        .with_context(|| format!("writing {}", entry_file.display()))?;
    println!("agent {id} enrolled (NKey {public_key})");
    println!(
        "  credentials (secret, mode 0600): {}",
        creds_file.display()
    );
    println!(
        "  its nats-server user entry:      {}",
        entry_file.display()
    );
    if !r.authorization.is_empty() {
        let block_file = dir.join("nats-authorization.conf");
        std::fs::write(&block_file, &r.authorization)
            .with_context(|| format!("writing {}", block_file.display()))?;
        println!(
            "  the whole authorization block:   {}",
            block_file.display()
        );
    }
    Ok(())
}

/// Prints nats-server's authorization block for every enrolled agent and the scheduler.
pub async fn nats_config(client: &mut AgentsClient<crate::connect::Svc>) -> Result<()> {
    let r = client
        .get_nats_config(pb::GetNatsConfigRequest {})
        .await?
        .into_inner();
    print!("{}", r.authorization);
    Ok(())
}
