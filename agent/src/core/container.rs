//! The docker executor's decisions, without Docker: what a task's container
//! is called, labelled, mounted and limited to, which image reference to
//! pull, and which attempt a container found at startup belongs to. The
//! shell (`shell::executor::docker`) turns a [`ContainerSpec`] into Engine
//! API calls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use drover_api::naming;
use drover_api::pb::PullPolicy;

use super::assign::AttemptPlan;
use super::executor::task_env;
use super::table::AttemptKey;

/// Labels on every container the agent starts: which attempt it runs, and
/// which agent owns it (a restarted agent adopts the containers labelled with
/// its id and its `--work-dir`, where their attempts' files are).
pub const LABEL_RUN: &str = "drover.run";
pub const LABEL_TASK: &str = "drover.task";
pub const LABEL_ATTEMPT: &str = "drover.attempt";
pub const LABEL_AGENT: &str = "drover.agent";
pub const LABEL_WORK_DIR: &str = "drover.work-dir";

/// Where a task finds its inputs (read-only), writes its outputs, and runs.
pub const INPUTS_MOUNT: &str = "/drover/inputs";
pub const OUTPUTS_MOUNT: &str = "/drover/outputs";
pub const WORK_MOUNT: &str = "/drover/work";
/// The run's code snapshot (read-only), also the working directory.
pub const CODE_MOUNT: &str = "/drover/code";

/// Longest container name the agent makes (Docker has no hard limit, people
/// have to read them).
const MAX_NAME_LEN: usize = 128;

/// A host directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// The attempt's host directories a container gets.
#[derive(Debug, Clone, Copy)]
pub struct HostDirs<'a> {
    /// The agent's `--work-dir`, which holds the attempt's directory.
    pub root: &'a Path,
    pub inputs: &'a Path,
    pub outputs: &'a Path,
    pub work: &'a Path,
    /// The unpacked code snapshot, when the plan has one.
    pub code: Option<&'a Path>,
}

/// Everything the agent asks Docker for when it creates a task's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// The image reference, with `:latest` made explicit.
    pub image: String,
    /// The task's argv replaces the image's entrypoint and command, so the
    /// container runs exactly what the spec says (as the process executor does).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`, sorted by name.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub working_dir: String,
    pub mounts: Vec<BindMount>,
    /// Billionths of a CPU; `None` = no limit.
    pub nano_cpus: Option<i64>,
    /// Bytes; `None` = no limit.
    pub memory: Option<i64>,
    /// UUIDs of the real GPUs to request from the NVIDIA runtime.
    pub gpu_uuids: Vec<String>,
    pub network: String,
}

/// What to do about the image before creating the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAction {
    /// Pull whether or not it is present (`Always`).
    Pull,
    /// Use the local image; pull only when it is missing (`IfNotPresent`, the default).
    PullIfMissing,
    /// Use the local image; missing is a failure (`Never`).
    RequireLocal,
}

impl ImageAction {
    pub fn for_policy(policy: PullPolicy) -> Self {
        match policy {
            PullPolicy::Always => ImageAction::Pull,
            PullPolicy::Unspecified | PullPolicy::IfNotPresent => ImageAction::PullIfMissing,
            PullPolicy::Never => ImageAction::RequireLocal,
        }
    }
}

/// `python:3.12` stays, `python` becomes `python:latest`, digests stay. The
/// Engine pulls *every* tag of a repository given without one.
pub fn image_reference(image: &str) -> String {
    let image = image.trim();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// `drover-<agent>-<run>-<task>-<attempt>`, readable in `docker ps`. Docker
/// names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: other characters become `_`,
/// and then (or when the name is too long) a hash of the exact attempt keeps
/// two attempts from ever sharing a name.
pub fn container_name(agent_id: &str, key: &AttemptKey) -> String {
    let raw = format!(
        "drover-{agent_id}-{}-{}-{}",
        key.run_id, key.task, key.attempt
    );
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == raw && clean.len() <= MAX_NAME_LEN {
        return clean;
    }
    let hash = fnv1a(&[
        agent_id.as_bytes(),
        key.run_id.as_bytes(),
        key.task.as_bytes(),
        key.attempt.to_string().as_bytes(),
    ]);
    let keep = MAX_NAME_LEN - 17;
    // `clean` is ASCII, so any byte index is a char boundary.
    let prefix = &clean[..clean.len().min(keep)];
    format!("{prefix}-{hash:016x}")
}

/// FNV-1a over the parts, each followed by a 0 byte (stable across builds,
/// unlike `std`'s hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The labels naming the attempt and its agent (id and work dir).
pub fn labels(agent_id: &str, work_dir: &Path, key: &AttemptKey) -> BTreeMap<String, String> {
    [
        (LABEL_RUN, key.run_id.clone()),
        (LABEL_TASK, key.task.clone()),
        (LABEL_ATTEMPT, key.attempt.to_string()),
        (LABEL_AGENT, agent_id.to_owned()),
        (LABEL_WORK_DIR, work_dir.to_string_lossy().into_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Whether a container labelled with this agent's id was started with this
/// `work_dir` too. One that was not is not adopted: its files are not here,
/// and it may belong to another agent of the same id on this engine (two
/// test clusters, a second agent started by mistake).
pub fn started_with_work_dir(labels: &HashMap<String, String>, work_dir: &Path) -> bool {
    labels
        .get(LABEL_WORK_DIR)
        .is_some_and(|d| Path::new(d) == work_dir)
}

/// The attempt a container found at startup runs, from its labels.
pub fn key_from_labels(labels: &HashMap<String, String>) -> Result<AttemptKey, String> {
    let get = |name: &str| {
        labels
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("label `{name}` missing"))
    };
    let run_id = get(LABEL_RUN)?.clone();
    let task = get(LABEL_TASK)?.clone();
    let attempt = get(LABEL_ATTEMPT)?;
    let attempt = attempt
        .parse()
        .map_err(|_| format!("label `{LABEL_ATTEMPT}` is `{attempt}`, not an attempt number"))?;
    for (what, value) in [("run", &run_id), ("task", &task)] {
        if value == "." || value == ".." || value.contains(['/', '\\', '\0']) {
            return Err(format!(
                "label `drover.{what}` `{value}` is not a valid name"
            ));
        }
    }
    Ok(AttemptKey {
        run_id,
        task,
        attempt,
    })
}

/// The task's environment inside its container: the plan's, the `DROVER_*`
/// variables with the mount points, and — when real GPUs are passed in —
/// `CUDA_VISIBLE_DEVICES` renumbered, because the NVIDIA runtime shows a
/// container only its GPUs, as devices 0..n in PCI bus order (the order of
/// their host indices). Simulated GPUs get no device, so their host indices stay.
pub fn container_env(plan: &AttemptPlan, agent_id: &str) -> Vec<String> {
    let real = real_gpu_uuids(plan).len();
    let mut env = task_env(plan, agent_id, INPUTS_MOUNT, OUTPUTS_MOUNT, CODE_MOUNT);
    if real > 0 {
        let ordinals: Vec<String> = (0..real).map(|i| i.to_string()).collect();
        for (name, value) in &mut env {
            if name == "CUDA_VISIBLE_DEVICES" {
                *value = ordinals.join(",");
            }
        }
    }
    env.sort();
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The plan's GPUs Docker must pass in: all but the simulated ones, in host index order.
fn real_gpu_uuids(plan: &AttemptPlan) -> Vec<String> {
    let mut gpus: Vec<&(u32, String)> = plan
        .gpus
        .iter()
        .filter(|(_, uuid)| !naming::is_simulated_gpu(uuid))
        .collect();
    gpus.sort();
    gpus.into_iter().map(|(_, uuid)| uuid.clone()).collect()
}

/// The container for `plan` on agent `agent_id`, using the attempt's `dirs`.
pub fn container_spec(
    plan: &AttemptPlan,
    agent_id: &str,
    dirs: HostDirs<'_>,
    network: &str,
) -> ContainerSpec {
    let mount = |source: &Path, target: &str, read_only| BindMount {
        source: source.to_path_buf(),
        target: target.to_owned(),
        read_only,
    };
    let (entrypoint, cmd) = match plan.command.split_first() {
        Some((program, args)) => (vec![program.clone()], args.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let mut mounts = vec![
        mount(dirs.inputs, INPUTS_MOUNT, true),
        mount(dirs.outputs, OUTPUTS_MOUNT, false),
        mount(dirs.work, WORK_MOUNT, false),
    ];
    let working_dir = match (&plan.code, dirs.code) {
        (Some(code), Some(source)) => {
            mounts.push(mount(source, CODE_MOUNT, true));
            match code.workdir.as_str() {
                "" => CODE_MOUNT.to_owned(),
                workdir => format!("{CODE_MOUNT}/{workdir}"),
            }
        }
        _ => WORK_MOUNT.to_owned(),
    };
    ContainerSpec {
        name: container_name(agent_id, &plan.key),
        image: image_reference(&plan.image),
        entrypoint,
        cmd,
        env: container_env(plan, agent_id),
        labels: labels(agent_id, dirs.root, &plan.key),
        working_dir,
        mounts,
        nano_cpus: (plan.cpu_millis > 0).then(|| i64::from(plan.cpu_millis) * 1_000_000),
        memory: (plan.memory_bytes > 0)
            .then(|| i64::try_from(plan.memory_bytes).unwrap_or(i64::MAX)),
        gpu_uuids: real_gpu_uuids(plan),
        network: network.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::assign::gpu_env;
    use crate::core::ExecutorKind;

    fn key(run: &str, task: &str, attempt: u32) -> AttemptKey {
        AttemptKey {
            run_id: run.into(),
            task: task.into(),
            attempt,
        }
    }

    fn plan(gpus: Vec<(u32, String)>) -> AttemptPlan {
        let mut env = vec![("MODE".to_owned(), "fast".to_owned())];
        env.extend(gpu_env(&gpus));
        env.sort();
        AttemptPlan {
            key: key("r1", "train", 2),
            executor: ExecutorKind::Docker,
            command: vec!["python".into(), "train.py".into(), "--lr=1".into()],
            env,
            inputs: vec![],
            outputs: vec![],
            timeout: None,
            log_key: "runs/r1/train.2.log".into(),
            gpus,
            image: "pytorch/pytorch".into(),
            pull_policy: PullPolicy::Unspecified,
            cpu_millis: 1500,
            memory_bytes: 2 << 30,
            traceparent: Some(TP.into()),
            code: None,
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn dirs() -> (PathBuf, PathBuf, PathBuf) {
        (
            PathBuf::from("/w/r1/train/2/inputs"),
            PathBuf::from("/w/r1/train/2/outputs"),
            PathBuf::from("/w/r1/train/2/work"),
        )
    }

    fn spec(plan: &AttemptPlan) -> ContainerSpec {
        let (i, o, w) = dirs();
        let dirs = HostDirs {
            root: Path::new("/w"),
            inputs: &i,
            outputs: &o,
            work: &w,
            code: Some(Path::new("/w/_code/abc")),
        };
        container_spec(plan, "gpu-1", dirs, "none")
    }

    #[test]
    fn a_code_snapshot_is_mounted_read_only_and_is_the_working_directory() {
        let mut p = plan(vec![]);
        let without = spec(&p);
        assert_eq!(without.working_dir, WORK_MOUNT);
        assert!(without.mounts.iter().all(|m| m.target != CODE_MOUNT));
        assert!(!without.env.iter().any(|e| e.starts_with("DROVER_CODE=")));

        p.code = Some(crate::core::CodePlan {
            sha256: "ab".repeat(32),
            workdir: String::new(),
        });
        let with = spec(&p);
        assert_eq!(with.working_dir, CODE_MOUNT);
        assert!(with.mounts.contains(&BindMount {
            source: PathBuf::from("/w/_code/abc"),
            target: CODE_MOUNT.to_owned(),
            read_only: true,
        }));
        assert!(with.env.contains(&format!("DROVER_CODE={CODE_MOUNT}")));

        if let Some(code) = p.code.as_mut() {
            code.workdir = "tools/bin".to_owned();
        }
        assert_eq!(spec(&p).working_dir, "/drover/code/tools/bin");
    }

    #[test]
    fn pull_policy_unspecified_is_if_not_present() {
        use ImageAction::*;
        assert_eq!(
            ImageAction::for_policy(PullPolicy::Unspecified),
            PullIfMissing
        );
        assert_eq!(
            ImageAction::for_policy(PullPolicy::IfNotPresent),
            PullIfMissing
        );
        assert_eq!(ImageAction::for_policy(PullPolicy::Always), Pull);
        assert_eq!(ImageAction::for_policy(PullPolicy::Never), RequireLocal);
    }

    #[test]
    fn image_references_get_an_explicit_tag() {
        assert_eq!(image_reference("python"), "python:latest");
        assert_eq!(image_reference("python:3.12"), "python:3.12");
        assert_eq!(image_reference("ghcr.io/org/img"), "ghcr.io/org/img:latest");
        assert_eq!(
            image_reference("localhost:5000/img"),
            "localhost:5000/img:latest"
        );
        assert_eq!(
            image_reference("localhost:5000/img:v1"),
            "localhost:5000/img:v1"
        );
        let digest = "img@sha256:0123456789abcdef";
        assert_eq!(image_reference(digest), digest);
    }

    #[test]
    fn names_are_readable_valid_and_distinct() {
        assert_eq!(
            container_name("a1", &key("r1", "train", 3)),
            "drover-a1-r1-train-3"
        );

        let odd = container_name("a1", &key("run 1", "tr:ain", 1));
        assert!(odd.starts_with("drover-a1-run_1-tr_ain-1-"), "{odd}");
        let other = container_name("a1", &key("run_1", "tr_ain", 1));
        assert_ne!(odd, other, "sanitising must not make two attempts collide");
        assert_eq!(
            odd,
            container_name("a1", &key("run 1", "tr:ain", 1)),
            "stable"
        );

        let long = container_name("a1", &key(&"r".repeat(300), "t", 1));
        assert!(long.len() <= MAX_NAME_LEN, "{}", long.len());
        for name in [&odd, &long] {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        }
    }

    #[test]
    fn labels_round_trip_to_the_attempt() {
        let k = key("r1", "train", 7);
        let labels: HashMap<_, _> = labels("a1", Path::new("/var/w"), &k).into_iter().collect();
        assert_eq!(labels[LABEL_AGENT], "a1");
        assert_eq!(key_from_labels(&labels), Ok(k));
        assert!(started_with_work_dir(&labels, Path::new("/var/w")));
        assert!(!started_with_work_dir(&labels, Path::new("/other")));
        assert!(!started_with_work_dir(&HashMap::new(), Path::new("/var/w")));

        let mut bad = labels.clone();
        bad.remove(LABEL_TASK);
        assert_eq!(
            key_from_labels(&bad).unwrap_err(),
            "label `drover.task` missing"
        );
        let mut bad = labels.clone();
        bad.insert(LABEL_ATTEMPT.into(), "x".into());
        assert!(key_from_labels(&bad)
            .unwrap_err()
            .contains("not an attempt number"));
        let mut bad = labels;
        bad.insert(LABEL_RUN.into(), "../etc".into());
        assert!(key_from_labels(&bad)
            .unwrap_err()
            .contains("not a valid name"));
    }

    #[test]
    fn the_spec_runs_the_argv_with_mounts_limits_and_labels() {
        let s = spec(&plan(vec![]));
        assert_eq!(s.name, "drover-gpu-1-r1-train-2");
        assert_eq!(s.image, "pytorch/pytorch:latest");
        assert_eq!(s.entrypoint, vec!["python".to_owned()]);
        assert_eq!(s.cmd, vec!["train.py".to_owned(), "--lr=1".to_owned()]);
        assert_eq!(s.working_dir, "/drover/work");
        assert_eq!(s.network, "none");
        assert_eq!(s.nano_cpus, Some(1_500_000_000));
        assert_eq!(s.memory, Some(2 << 30));
        assert!(s.gpu_uuids.is_empty());
        assert_eq!(s.labels[LABEL_RUN], "r1");
        assert_eq!(s.labels[LABEL_TASK], "train");
        assert_eq!(s.labels[LABEL_ATTEMPT], "2");
        assert_eq!(s.labels[LABEL_AGENT], "gpu-1");
        assert_eq!(s.labels[LABEL_WORK_DIR], "/w");
        let (i, o, w) = dirs();
        assert_eq!(
            s.mounts,
            vec![
                BindMount {
                    source: i,
                    target: "/drover/inputs".into(),
                    read_only: true
                },
                BindMount {
                    source: o,
                    target: "/drover/outputs".into(),
                    read_only: false
                },
                BindMount {
                    source: w,
                    target: "/drover/work".into(),
                    read_only: false
                },
            ]
        );
        for var in [
            "DROVER_RUN_ID=r1",
            "DROVER_TASK=train",
            "DROVER_ATTEMPT=2",
            "DROVER_AGENT_ID=gpu-1",
            "DROVER_INPUTS=/drover/inputs",
            "DROVER_OUTPUTS=/drover/outputs",
            "MODE=fast",
            "CUDA_VISIBLE_DEVICES=",
            "NVIDIA_VISIBLE_DEVICES=none",
        ] {
            assert!(s.env.contains(&var.to_owned()), "{var} not in {:?}", s.env);
        }
        assert!(s.env.contains(&format!("TRACEPARENT={TP}")), "{:?}", s.env);
        let mut sorted = s.env.clone();
        sorted.sort();
        assert_eq!(s.env, sorted);

        let mut unlimited = plan(vec![]);
        unlimited.cpu_millis = 0;
        unlimited.memory_bytes = 0;
        let s = spec(&unlimited);
        assert_eq!((s.nano_cpus, s.memory), (None, None));
    }

    #[test]
    fn real_gpus_are_requested_and_renumbered_simulated_ones_are_not() {
        let s = spec(&plan(vec![(5, "GPU-e".into()), (2, "GPU-b".into())]));
        assert_eq!(s.gpu_uuids, vec!["GPU-b".to_owned(), "GPU-e".to_owned()]);
        assert!(
            s.env.contains(&"CUDA_VISIBLE_DEVICES=0,1".to_owned()),
            "{:?}",
            s.env
        );
        assert!(
            s.env
                .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-e,GPU-b".to_owned()),
            "{:?}",
            s.env
        );

        let sim = |i: u32| (i, format!("{}{i}", naming::SIMULATED_GPU_UUID_PREFIX));
        let s = spec(&plan(vec![sim(1), sim(3)]));
        assert!(s.gpu_uuids.is_empty());
        assert!(
            s.env.contains(&"CUDA_VISIBLE_DEVICES=1,3".to_owned()),
            "{:?}",
            s.env
        );
    }
}
