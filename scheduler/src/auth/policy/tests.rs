use super::*;

fn caller(role: Role, queues: &[&str]) -> Caller {
    Caller {
        name: "ci".into(),
        role,
        queues: queues.iter().map(|q| q.to_string()).collect(),
    }
}

const SUBMIT: &str = "/drover.v1.Scheduler/SubmitRun";

#[test]
fn roles_cover_their_own_writes_and_every_read() {
    let cases = [
        (SUBMIT, [true, false, true, false]),
        ("/drover.v1.Scheduler/CancelRun", [true, false, true, false]),
        ("/drover.v1.Scheduler/PutCode", [true, false, true, false]),
        (
            "/drover.v1.Scheduler/SetRunPriority",
            [true, true, false, false],
        ),
        ("/drover.v1.Agents/DrainAgent", [true, true, false, false]),
        ("/drover.v1.Queues/PauseQueue", [true, true, false, false]),
        ("/drover.v1.Queues/CreateQueue", [true, false, false, false]),
        (
            "/drover.v1.Scheduler/ForgetCache",
            [true, false, false, false],
        ),
        ("/drover.v1.Tokens/CreateToken", [true, false, false, false]),
        ("/drover.v1.Scheduler/GetRun", [true, true, true, true]),
        ("/drover.v1.Scheduler/GetLogs", [true, true, true, true]),
        ("/drover.v1.Agents/ListAgents", [true, true, true, true]),
        ("/drover.v1.Queues/ShowQueue", [true, true, true, true]),
    ];
    for (path, allowed) in cases {
        for (role, want) in Role::ALL.into_iter().zip(allowed) {
            assert_eq!(
                authorize(&caller(role, &[]), path).is_ok(),
                want,
                "{role} calling {path}"
            );
        }
    }
}

#[test]
fn methods_not_in_the_table_need_admin() {
    for path in [
        "/drover.v1.Agents/EnrollAgent",
        "/drover.v1.Agents/GetNatsConfig",
        "/drover.v1.Scheduler/SomethingNew",
        "/other.Service/Call",
        "",
    ] {
        assert_eq!(needed(path), Needed::Role(Role::Admin), "{path}");
        assert!(authorize(&caller(Role::Operator, &[]), path).is_err());
        assert!(authorize(&caller(Role::Admin, &[]), path).is_ok());
    }
}

#[test]
fn health_and_reflection_are_open() {
    assert_eq!(needed("/grpc.health.v1.Health/Check"), Needed::Open);
    assert_eq!(needed("/grpc.health.v1.Health/Watch"), Needed::Open);
    assert_eq!(
        needed("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
        Needed::Open
    );
    assert_eq!(
        needed("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
        Needed::Open
    );
    // A look-alike prefix is not the health service.
    assert_eq!(
        needed("/grpc.health.v1.HealthX/Check"),
        Needed::Role(Role::Admin)
    );
}

#[test]
fn a_role_refusal_names_the_role_the_action_and_what_it_needs() {
    let err = authorize(&caller(Role::Viewer, &[]), SUBMIT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "role viewer may not SubmitRun (needs submitter)"
    );
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.reason(), "role");
    assert_eq!(err.token_name(), Some("ci"));
}

#[test]
fn queue_limits_apply_to_limited_submitters_only() {
    let limited = caller(Role::Submitter, &["a"]);
    assert!(may_use_queue(&limited, "submit to", "a").is_ok());
    let err = may_use_queue(&limited, "submit to", "b").unwrap_err();
    assert_eq!(
        err.to_string(),
        "token ci (submitter) may not submit to queue b (allowed: a)"
    );
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(may_use_queue(&caller(Role::Submitter, &[]), "submit to", "b").is_ok());
    assert!(may_use_queue(&caller(Role::Admin, &[]), "cancel in", "b").is_ok());
}

#[test]
fn bearer_reads_the_token_and_refuses_other_shapes() {
    assert_eq!(bearer(Some("Bearer drv_x")), Ok("drv_x"));
    assert_eq!(bearer(Some("bearer  drv_x ")), Ok("drv_x"));
    assert_eq!(bearer(None), Err(Refusal::Missing));
    assert_eq!(bearer(Some("Basic abc")), Err(Refusal::Malformed));
    assert_eq!(bearer(Some("Bearer")), Err(Refusal::Malformed));
    assert_eq!(bearer(Some("Bearer ")), Err(Refusal::Malformed));
}

fn record(expires_at_ms: u64, role: pb::Role) -> pb::TokenRecord {
    pb::TokenRecord {
        name: "ci".into(),
        role: role as i32,
        queues: vec!["a".into()],
        expires_at_ms,
        ..Default::default()
    }
}

#[test]
fn identify_refuses_unknown_expired_and_roleless_tokens() {
    assert_eq!(identify(None, 5), Err(Refusal::Invalid));
    let r = record(100, pb::Role::Submitter);
    assert_eq!(
        identify(Some(&r), 99),
        Ok(Caller {
            name: "ci".into(),
            role: Role::Submitter,
            queues: vec!["a".into()]
        })
    );
    assert_eq!(
        identify(Some(&r), 100),
        Err(Refusal::Expired { name: "ci".into() })
    );
    assert!(identify(Some(&record(0, pb::Role::Viewer)), u64::MAX).is_ok());
    assert_eq!(
        identify(Some(&record(0, pb::Role::Unspecified)), 1),
        Err(Refusal::Invalid)
    );
    assert_eq!(Refusal::Invalid.code(), tonic::Code::Unauthenticated);
}

#[test]
fn tokens_have_the_prefix_and_256_bits_in_hex() {
    let t = token_text(&[0xab; TOKEN_BYTES]);
    assert!(t.starts_with("drv_"));
    assert_eq!(t.len(), 4 + 64);
    assert_eq!(&t[4..8], "abab");
    assert_ne!(hash(&t), hash(&token_text(&[0xac; TOKEN_BYTES])));
}

#[test]
fn roles_parse_from_their_names_only() {
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        assert_eq!(Role::from_pb(r.to_pb()), Some(r));
    }
    assert_eq!(
        "bogus".parse::<Role>().unwrap_err(),
        "unknown role `bogus` (expected admin, operator, submitter or viewer)"
    );
}

#[test]
fn names_and_queue_limits_are_checked() {
    assert!(check_name("ci-bot_1.x").is_ok());
    assert!(check_name("").is_err());
    assert!(check_name("Has Space").is_err());
    assert!(check_name("a/b").is_err());
    assert!(check_name(&"x".repeat(65)).is_err());
    assert!(check_new(Role::Submitter, &["ml".into()]).is_ok());
    assert!(check_new(Role::Viewer, &["ml".into()]).is_err());
    assert!(check_new(Role::Submitter, &["Bad Queue".into()]).is_err());
}

#[test]
fn metric_labels_are_known_methods_or_other() {
    assert_eq!(method_label(SUBMIT), SUBMIT);
    assert_eq!(method_label("/x.Y/"), "other");
}
