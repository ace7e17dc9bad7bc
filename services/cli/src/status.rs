//! `drover status`: the schedulers sharing one etcd prefix, which one leads
//! and since when (answered by any of them, standbys included).

use anyhow::Result;
use serde_json::json;

use drover_api::pb;

use crate::output;
use crate::Format;

/// The table or JSON of `status`, as of `now_ms`.
pub fn render(status: &pb::ClusterStatus, format: Format, now_ms: u64) -> String {
    match format {
        Format::Json => {
            let schedulers: Vec<_> = status
                .schedulers
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "address": s.address,
                        "leader": s.id == status.leader_id,
                        "leader_since_ms": (s.leader_since_ms > 0).then_some(s.leader_since_ms),
                        "started_at_ms": s.started_at_ms,
                    })
                })
                .collect();
            let leader = (!status.leader_id.is_empty()).then_some(&status.leader_id);
            format!(
                "{:#}\n",
                json!({"leader": leader, "answered_by": status.answered_by, "schedulers": schedulers})
            )
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = status
                .schedulers
                .iter()
                .map(|s| {
                    let (role, since) = if s.id == status.leader_id && s.leader_since_ms > 0 {
                        let ago = output::duration(now_ms.saturating_sub(s.leader_since_ms));
                        ("leader", format!("{ago} ago"))
                    } else {
                        ("standby", "-".to_owned())
                    };
                    let up = output::duration(now_ms.saturating_sub(s.started_at_ms));
                    vec![s.id.clone(), role.into(), since, up, s.address.clone()]
                })
                .collect();
            let mut out = output::table(
                &["SCHEDULER", "ROLE", "LEADING FOR", "UP", "ADDRESS"],
                &[false, false, true, true, false],
                &rows,
            );
            if status.leader_id.is_empty() {
                out.push_str("no leader elected yet (a failover may be under way)\n");
            }
            out
        }
    }
}

/// Prints the cluster's status as one scheduler sees it.
pub async fn run(
    client: &mut pb::cluster_client::ClusterClient<crate::connect::Svc>,
    format: Format,
) -> Result<()> {
    let status = client
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await?
        .into_inner();
    print!("{}", render(&status, format, crate::now_ms()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_marked_with_how_long_it_has_led() -> serde_json::Result<()> {
        let member = |id: &str, since: u64| pb::SchedulerRecord {
            id: id.into(),
            address: format!("http://{id}:7070"),
            started_at_ms: 1_000,
            leader_since_ms: since,
            leader_revision: 0,
        };
        let status = pb::ClusterStatus {
            schedulers: vec![member("a", 61_000), member("b", 0)],
            leader_id: "a".into(),
            answered_by: "b".into(),
        };
        let table = render(&status, Format::Table, 121_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[1].starts_with("a") && lines[1].contains("leader") && lines[1].contains("1m ago"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("b") && lines[2].contains("standby"),
            "{table}"
        );
        let v: serde_json::Value = serde_json::from_str(&render(&status, Format::Json, 0))?;
        assert_eq!(v["leader"], "a");
        assert_eq!(v["schedulers"][1]["leader"], false);
        assert_eq!(
            v["schedulers"][1]["leader_since_ms"],
            serde_json::Value::Null
        );
        Ok(())
    }
}
