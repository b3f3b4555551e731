//! Property tests of the proto boundary: every conversion and validation the broker runs
//! on a request (`convert.rs`, `limits.rs`, ListSessions paging) and the SDK's size
//! parsing. For each: arbitrary input never panics and, when refused, is refused with an
//! INVALID_ARGUMENT naming a field of the request; generated valid input is accepted;
//! input broken in one known way is refused naming exactly that field.
//!
//! Every property body counts itself, so the run proves how many cases it executed.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use hearth_broker::{
    api::sessions::page,
    convert::{self, MAX_LABEL_LEN, MAX_LABELS, MAX_LIST_ENTRIES},
    error::Error,
    limits::{LimitsConfig, glob_match},
    placement,
};
use hearth_sdk::proto::v1::{
    ExecProbe, ExecRequest, Gpu, GpuRequest, GpuSource, Header, Hello, HttpProbe, InvokeRequest,
    ListSessionsRequest, NetworkSpec, PlacementSpec, PortSpec, ReadinessProbe, Resources,
    RestartPolicy, SecuritySpec, Session, SessionSpec, Template, readiness_probe,
};
use proptest::{
    collection::{hash_map, vec},
    option,
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

/// Cases executed, over every property.
static CASES: AtomicU64 = AtomicU64::new(0);

/// The least number of cases the whole run must execute.
const MIN_CASES: u64 = 100_000;

fn counted() {
    CASES.fetch_add(1, Ordering::Relaxed);
}

/// Runs one property for `cases` cases; a failure panics with the minimal input.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| {
        counted();
        test(v)
    }) {
        panic!("property {name:?} failed: {e}");
    }
}

/// The field an INVALID_ARGUMENT names; anything else fails the property.
fn invalid_field<T: std::fmt::Debug>(
    result: Result<T, Error>,
) -> Result<Option<String>, TestCaseError> {
    match result {
        Ok(_) => Ok(None),
        Err(Error::InvalidArgument { field, reason }) => {
            prop_assert!(!field.is_empty(), "an error without a field: {reason}");
            prop_assert!(!reason.is_empty(), "an error without a reason ({field})");
            Ok(Some(field))
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not INVALID_ARGUMENT: {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------- strategies

/// Short strings with the characters that validation cares about.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("[a-zA-Z0-9._/:=-]{{0,{max}}}")).unwrap(),
        1 => proptest::string::string_regex(&format!("(?s).{{0,{max}}}")).unwrap(),
        1 => Just(String::new()),
    ]
}

/// A string that is sometimes far too long.
fn sized_text(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => text(12),
        1 => (limit - 2..limit + 3).prop_map(|n| "x".repeat(n)),
    ]
}

fn map(max_entries: usize, limit: usize) -> impl Strategy<Value = HashMap<String, String>> {
    prop_oneof![
        8 => hash_map(text(10), sized_text(limit), 0..6),
        1 => (max_entries - 1..max_entries + 3)
            .prop_map(|n| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()),
    ]
}

fn strings(max_entries: usize, limit: usize) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        8 => vec(sized_text(limit), 0..5),
        1 => (max_entries - 1..max_entries + 3).prop_map(|n| vec!["a".to_owned(); n]),
    ]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    option::of(
        (
            prop_oneof![any::<i64>(), -5i64..100_000],
            prop_oneof![any::<i32>(), 0i32..1_000_000_000],
        )
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..100, 1 => any::<u32>(), 1 => 65530u32..65540]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1i32..5, 1 => any::<i32>()]
}

fn probe() -> impl Strategy<Value = Option<ReadinessProbe>> {
    let check = prop_oneof![
        Just(None),
        small_u32().prop_map(|p| Some(readiness_probe::Check::TcpPort(p))),
        (small_u32(), text(8))
            .prop_map(|(port, path)| Some(readiness_probe::Check::Http(HttpProbe { port, path }))),
        strings(MAX_LIST_ENTRIES, 64)
            .prop_map(|argv| Some(readiness_probe::Check::Exec(ExecProbe { argv }))),
    ];
    option::of(
        (check, duration()).prop_map(|(check, timeout)| ReadinessProbe {
            check,
            timeout,
            ..ReadinessProbe::default()
        }),
    )
}

prop_compose! {
    fn any_spec()(
        image in sized_text(convert::MAX_IMAGE_LEN),
        command in strings(MAX_LIST_ENTRIES, 64),
        env in map(MAX_LIST_ENTRIES, 64),
        gpus in option::of((small_u32(), sized_text(convert::MAX_NAME_LEN), any::<u64>())
            .prop_map(|(count, model, min_memory_bytes)| GpuRequest { count, model, min_memory_bytes })),
        resources in option::of(any::<(u32, u64, u32)>().prop_map(|(cpu_millis, memory_bytes, pids_limit)|
            Resources { cpu_millis, memory_bytes, pids_limit })),
        ports in vec((small_u32(), text(8)).prop_map(|(port, name)| PortSpec { port, name }), 0..4),
        readiness in probe(),
        (idle_timeout, max_lifetime) in (duration(), duration()),
        idle_action in enum_value(),
        placement in option::of((enum_value(), map(MAX_LABELS, MAX_LABEL_LEN), strings(MAX_LABELS, MAX_LABEL_LEN))
            .prop_map(|(strategy, node_selector, tolerations)| PlacementSpec { strategy, node_selector, tolerations })),
        security in option::of(vec(prop_oneof![text(6), Just("SYS_PTRACE".to_owned()), Just("cap_net_admin".to_owned())], 0..4)
            .prop_map(|add_capabilities| SecuritySpec { add_capabilities })),
        network in option::of(enum_value().prop_map(|egress| NetworkSpec { egress })),
        restart in option::of((enum_value(), 0u32..200).prop_map(|(mode, max_restarts)| RestartPolicy { mode, max_restarts })),
        pull_policy in enum_value(),
    ) -> SessionSpec {
        SessionSpec {
            image, command, env, gpus, resources, ports, readiness, idle_timeout, idle_action,
            max_lifetime, placement, security, network, restart, pull_policy,
        }
    }
}

prop_compose! {
    /// A spec that every check accepts.
    fn valid_spec()(
        image in "[a-z][a-z0-9./:-]{0,40}",
        command in vec("[ -~]{0,20}", 0..4),
        env in hash_map("[A-Z_][A-Z0-9_]{0,10}", "[ -~]{0,20}", 0..4),
        count in 0u32..=convert::MAX_GPUS_PER_SESSION,
        ports in proptest::sample::subsequence((1u32..=20).map(|p| p * 1000).collect::<Vec<_>>(), 0..4),
        probe_first in any::<bool>(),
        idle_secs in 0i64..1_000_000,
        idle_action in 0i32..=3,
        strategy in 0i32..=2,
        selector in hash_map("[a-z]{1,10}", "[a-z0-9]{0,10}", 0..3),
        caps in proptest::sample::subsequence(vec!["SYS_PTRACE", "NET_ADMIN", "cap_ipc_lock"], 0..3),
        egress in 0i32..=2,
    ) -> SessionSpec {
        let readiness = (probe_first && !ports.is_empty()).then(|| ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(ports[0])),
            ..ReadinessProbe::default()
        });
        SessionSpec {
            image,
            command,
            env,
            gpus: Some(GpuRequest { count, ..GpuRequest::default() }),
            ports: ports.into_iter().map(|port| PortSpec { port, name: String::new() }).collect(),
            readiness,
            idle_timeout: Some(prost_types::Duration { seconds: idle_secs, nanos: 0 }),
            idle_action,
            placement: Some(PlacementSpec { strategy, node_selector: selector, tolerations: vec![] }),
            security: Some(SecuritySpec { add_capabilities: caps.into_iter().map(str::to_owned).collect() }),
            network: Some(NetworkSpec { egress }),
            ..SessionSpec::default()
        }
    }
}

/// Breaks one field of a spec.
type Breaker = fn(&mut SessionSpec);

/// Ways to break a valid spec, each with the field its error must name.
fn spec_breakers() -> Vec<(&'static str, Breaker)> {
    vec![
        ("spec.image", |s| s.image.clear()),
        ("spec.network.egress", |s| {
            s.network = Some(NetworkSpec { egress: 7 })
        }),
        ("spec.restart.mode", |s| {
            s.restart = Some(RestartPolicy {
                mode: 7,
                max_restarts: 1,
            })
        }),
        ("spec.restart.max_restarts", |s| {
            s.restart = Some(RestartPolicy {
                mode: 2,
                max_restarts: 101,
            })
        }),
        ("spec.image", |s| {
            s.image = "x".repeat(convert::MAX_IMAGE_LEN + 1)
        }),
        ("spec.command", |s| {
            s.command = vec![String::new(); MAX_LIST_ENTRIES + 1]
        }),
        ("spec.command[0]", |s| s.command = vec!["a\0b".into()]),
        ("spec.env", |s| {
            s.env.insert("A=B".into(), String::new());
        }),
        ("spec.env[BIG]", |s| {
            s.env
                .insert("BIG".into(), "x".repeat(convert::MAX_VALUE_LEN + 1));
        }),
        ("spec.gpus.count", |s| {
            s.gpus.get_or_insert_default().count = convert::MAX_GPUS_PER_SESSION + 1
        }),
        ("spec.ports[0].port", |s| {
            s.ports.insert(
                0,
                PortSpec {
                    port: 0,
                    name: String::new(),
                },
            )
        }),
        ("spec.idle_timeout", |s| {
            s.idle_timeout = Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            })
        }),
        ("spec.max_lifetime", |s| {
            s.max_lifetime = Some(prost_types::Duration {
                seconds: -9,
                nanos: 0,
            })
        }),
        ("spec.idle_action", |s| s.idle_action = 77),
        ("spec.placement.strategy", |s| {
            s.placement.get_or_insert_default().strategy = 9
        }),
        ("spec.placement.node_selector", |s| {
            s.placement
                .get_or_insert_default()
                .node_selector
                .insert(String::new(), "v".into());
        }),
        ("spec.readiness", |s| {
            s.readiness = Some(ReadinessProbe {
                check: Some(readiness_probe::Check::TcpPort(1)),
                ..ReadinessProbe::default()
            })
        }),
        ("spec.security.add_capabilities[0]", |s| {
            s.security = Some(SecuritySpec {
                add_capabilities: vec!["NOT A CAP".into()],
            })
        }),
    ]
}

fn ulid_string() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|n| ulid::Ulid(n).to_string())
}

fn any_headers() -> impl Strategy<Value = Vec<Header>> {
    prop_oneof![
        8 => vec((text(10), sized_text(convert::MAX_HEADER_VALUE_LEN)).prop_map(|(name, value)| Header { name, value }), 0..4),
        1 => (convert::MAX_HEADERS - 1..convert::MAX_HEADERS + 2)
            .prop_map(|n| (0..n).map(|i| Header { name: format!("x-{i}"), value: String::new() }).collect()),
    ]
}

fn bytes(limit: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        50 => vec(any::<u8>(), 0..16),
        1 => (limit - 1..limit + 2).prop_map(|n| vec![0u8; n]),
    ]
}

// ---------------------------------------------------------------- properties

fn spec_properties(n: u32) {
    check("session_spec: any input", n, any_spec(), |s| {
        match invalid_field(convert::session_spec(Some(s.clone())))? {
            Some(field) => prop_assert!(field.starts_with("spec"), "{field}"),
            None => {
                // Defaults are a fixed point: the stored spec checks to itself.
                let checked = convert::session_spec(Some(s)).unwrap();
                let again = convert::session_spec(Some(checked.spec.clone()));
                prop_assert_eq!(again.ok(), Some(checked));
            }
        }
        Ok(())
    });
    let breakers = spec_breakers();
    let count = breakers.len();
    check(
        "session_spec: valid accepted, each break named",
        n,
        (valid_spec(), 0..count),
        |(s, which)| {
            let checked = convert::session_spec(Some(s.clone()));
            prop_assert!(checked.is_ok(), "{:?}", checked.err());
            let (field, break_it) = spec_breakers()[which];
            let mut broken = s;
            break_it(&mut broken);
            let named = invalid_field(convert::session_spec(Some(broken)))?;
            prop_assert_eq!(named.as_deref(), Some(field));
            Ok(())
        },
    );
    check(
        "template: any input",
        n / 2,
        (
            text(70),
            sized_text(convert::MAX_DESCRIPTION_LEN),
            option::of(any_spec()),
            small_u32(),
        ),
        |(name, description, spec, warm_pool)| {
            let t = Template {
                name,
                description,
                spec,
                warm_pool,
                ..Template::default()
            };
            if let Some(field) = invalid_field(convert::template(Some(t)))? {
                prop_assert!(field.starts_with("template"), "{field}");
            }
            Ok(())
        },
    );
    check(
        "template: valid accepted",
        n / 2,
        (
            "[a-z0-9-]{1,63}",
            valid_spec(),
            0u32..=convert::MAX_WARM_POOL,
        ),
        |(name, spec, warm_pool)| {
            let t = Template {
                name,
                spec: Some(spec),
                warm_pool,
                ..Template::default()
            };
            let checked = convert::template(Some(t));
            prop_assert!(checked.is_ok(), "{:?}", checked.err());
            Ok(())
        },
    );
}

fn label_properties(n: u32) {
    check(
        "session_labels: against a model",
        n,
        map(MAX_LABELS, MAX_LABEL_LEN),
        |labels| {
            let ok = labels.len() <= MAX_LABELS
                && labels.iter().all(|(k, v)| {
                    (1..=MAX_LABEL_LEN).contains(&k.len())
                        && v.len() <= MAX_LABEL_LEN
                        && !k.starts_with(convert::RESERVED_LABEL_PREFIX)
                });
            let field = invalid_field(convert::session_labels(&labels))?;
            prop_assert_eq!(field.is_none(), ok);
            if let Some(field) = field {
                prop_assert!(field.starts_with("labels"), "{field}");
            }
            Ok(())
        },
    );
    check(
        "env: against a model",
        n,
        map(MAX_LIST_ENTRIES, convert::MAX_VALUE_LEN),
        |env| {
            let ok = env.len() <= MAX_LIST_ENTRIES
                && env.iter().all(|(k, v)| {
                    (1..=convert::MAX_ENV_NAME_LEN).contains(&k.len())
                        && !k.contains(['=', '\0'])
                        && v.len() <= convert::MAX_VALUE_LEN
                        && !v.contains('\0')
                });
            let field = invalid_field(convert::env("spec.env", &env))?;
            prop_assert_eq!(field.is_none(), ok);
            if let Some(field) = field {
                prop_assert!(field.starts_with("spec.env"), "{field}");
            }
            Ok(())
        },
    );
    check("capability: against a model", n, text(40), |name| {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let ok = (1..=convert::MAX_CAPABILITY_LEN).contains(&bare.len())
            && bare
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let result = convert::capability("c", &name);
        prop_assert_eq!(result.is_ok(), ok);
        if let Ok(canonical) = result {
            prop_assert_eq!(
                convert::capability("c", &canonical).ok(),
                Some(canonical.clone()),
                "canonical is a fixed point"
            );
        }
        Ok(())
    });
}

fn id_properties(n: u32) {
    check(
        "ids and names: against a model",
        n,
        (text(80), ulid_string()),
        |(s, ulid)| {
            let node_ok = (1..=convert::MAX_NODE_ID_LEN).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            prop_assert_eq!(convert::node_id("id", &s).is_ok(), node_ok);
            let template_ok = (1..=convert::MAX_TEMPLATE_NAME_LEN).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            prop_assert_eq!(convert::template_name("name", &s).is_ok(), template_ok);
            let request_ok = s.len() <= 128 && !s.contains(['/', '\0']);
            prop_assert_eq!(convert::request_id(&s).is_ok(), request_ok);
            prop_assert!(convert::session_id("id", &ulid).is_ok());
            if let Some(field) = invalid_field(convert::session_id("id", &s))? {
                prop_assert_eq!(field, "id");
            }
            Ok(())
        },
    );
    check(
        "state filters: against a model",
        n,
        vec(enum_value(), 0..5),
        |states| {
            let session_ok = states
                .iter()
                .all(|s| *s != 0 && hearth_sdk::proto::v1::SessionState::try_from(*s).is_ok());
            let node_ok = states
                .iter()
                .all(|s| *s != 0 && hearth_sdk::proto::v1::NodeState::try_from(*s).is_ok());
            prop_assert_eq!(
                convert::session_states("states", &states).is_ok(),
                session_ok
            );
            prop_assert_eq!(convert::node_states("states", &states).is_ok(), node_ok);
            Ok(())
        },
    );
}

fn hello_properties(n: u32) {
    let gpu = (text(12), any::<bool>(), 0u32..4).prop_map(|(uuid, simulated, index)| Gpu {
        uuid,
        simulated,
        index,
        ..Gpu::default()
    });
    let hello = (
        text(20),
        text(8),
        map(MAX_LABELS, MAX_LABEL_LEN),
        strings(MAX_LABELS, MAX_LABEL_LEN),
        vec(gpu, 0..4),
        enum_value(),
    )
        .prop_map(
            |(node_id, incarnation, labels, taints, gpus, gpu_source)| Hello {
                node_id,
                incarnation,
                labels,
                taints,
                gpus,
                gpu_source,
                ..Hello::default()
            },
        );
    check("hello: any input", n, hello, |h| {
        if let Some(field) = invalid_field(convert::hello(h))? {
            prop_assert!(field.starts_with("hello."), "{field}");
        }
        Ok(())
    });
    let valid = ("[a-z0-9.-]{1,30}", "[A-Z0-9]{1,26}", 0usize..8).prop_map(
        |(node_id, incarnation, gpus)| Hello {
            node_id,
            incarnation,
            gpu_source: GpuSource::Simulated as i32,
            gpus: (0..gpus)
                .map(|i| Gpu {
                    uuid: format!("GPU-SIM-{i}"),
                    simulated: true,
                    index: i as u32,
                    ..Gpu::default()
                })
                .collect(),
            ..Hello::default()
        },
    );
    check("hello: valid accepted", n / 2, valid, |h| {
        let gpus = h.gpus.len();
        let node = convert::hello(h)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_node();
        prop_assert_eq!(node.gpus.len(), gpus);
        Ok(())
    });
}

fn turn_properties(n: u32) {
    let exec = (
        prop_oneof![ulid_string(), text(30)],
        strings(MAX_LIST_ENTRIES, convert::MAX_VALUE_LEN),
        map(MAX_LIST_ENTRIES, convert::MAX_VALUE_LEN),
        bytes(convert::MAX_EXEC_STDIN),
        duration(),
        sized_text(convert::MAX_PATH_LEN),
    )
        .prop_map(
            |(session_id, argv, env, stdin, timeout, workdir)| ExecRequest {
                session_id,
                argv,
                env,
                stdin,
                timeout,
                workdir,
            },
        );
    check("exec_request: any input", n, exec, |r| {
        if let Some(field) = invalid_field(convert::exec_request(&r))? {
            let top = field
                .split(['[', '.'])
                .next()
                .unwrap_or_default()
                .to_owned();
            prop_assert!(
                ["session_id", "argv", "env", "stdin", "timeout", "workdir"]
                    .contains(&top.as_str()),
                "{field}"
            );
        }
        Ok(())
    });
    let valid_exec = (
        ulid_string(),
        vec("[ -~]{1,20}", 1..5),
        hash_map("[A-Z]{1,8}", "[ -~]{0,20}", 0..3),
        vec(any::<u8>(), 0..64),
        0i64..3600,
    )
        .prop_map(|(session_id, argv, env, stdin, secs)| ExecRequest {
            session_id,
            argv,
            env,
            stdin,
            timeout: Some(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            }),
            workdir: String::new(),
        });
    check("exec_request: valid accepted", n / 2, valid_exec, |r| {
        prop_assert!(
            convert::exec_request(&r).is_ok(),
            "{:?}",
            convert::exec_request(&r).err()
        );
        Ok(())
    });
    let invoke = (
        prop_oneof![ulid_string(), text(30)],
        small_u32(),
        prop_oneof![text(6), Just("POST".to_owned())],
        prop_oneof![
            text(20),
            sized_text(convert::MAX_PATH_LEN).prop_map(|p| format!("/{p}"))
        ],
        any_headers(),
        bytes(convert::MAX_INVOKE_BODY),
        duration(),
    )
        .prop_map(
            |(session_id, port, method, path, headers, body, timeout)| InvokeRequest {
                session_id,
                port,
                method,
                path,
                headers,
                body,
                timeout,
            },
        );
    check("invoke_request: any input", n, invoke, |r| {
        if let Some(field) = invalid_field(convert::invoke_request(r))? {
            let top = field
                .split(['[', '.'])
                .next()
                .unwrap_or_default()
                .to_owned();
            prop_assert!(
                [
                    "session_id",
                    "port",
                    "method",
                    "path",
                    "headers",
                    "body",
                    "timeout"
                ]
                .contains(&top.as_str()),
                "{field}"
            );
        }
        Ok(())
    });
    let valid_invoke = (
        ulid_string(),
        1u32..=65535,
        "(GET|POST|PUT|DELETE|)",
        "(/[a-z0-9?=&]{0,20})?",
        vec(
            ("[a-zA-Z][a-zA-Z0-9-]{0,20}", "[ -~]{0,30}")
                .prop_map(|(name, value)| Header { name, value }),
            0..5,
        ),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(session_id, port, method, path, headers, body)| InvokeRequest {
                session_id,
                port,
                method,
                path,
                headers,
                body,
                timeout: None,
            },
        );
    check(
        "invoke_request: valid accepted with defaults",
        n / 2,
        valid_invoke,
        |r| {
            let checked =
                convert::invoke_request(r).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(!checked.method.is_empty());
            prop_assert!(checked.path.starts_with('/'));
            Ok(())
        },
    );
}

fn page_properties(n: u32) {
    let request = (small_u32(), text(26), vec(enum_value(), 0..3), map(4, 20)).prop_map(
        |(page_size, page_token, states, labels)| ListSessionsRequest {
            page_size,
            page_token,
            states,
            labels,
        },
    );
    check(
        "ListSessions paging: any request",
        n,
        (request, 0usize..30),
        |(request, count)| {
            let all: Vec<Session> = (0..count)
                .map(|i| Session {
                    id: format!("{i:03}"),
                    state: (i % 9 + 1) as i32,
                    ..Session::default()
                })
                .collect();
            match invalid_field(page(all, &request))? {
                Some(field) => prop_assert!(
                    field == "page_size" || field.starts_with("states"),
                    "{field}"
                ),
                None => {
                    let r = page(Vec::new(), &request).unwrap();
                    prop_assert!(r.sessions.is_empty() && r.next_page_token.is_empty());
                    prop_assert!(request.page_size <= 1000);
                }
            }
            Ok(())
        },
    );
}

fn limits_properties(n: u32) {
    check(
        "glob: agrees with placement's glob where both apply",
        n,
        ("[ab*]{0,6}", "[ab]{0,8}"),
        |(pattern, name)| {
            if !pattern.is_empty() {
                prop_assert_eq!(
                    glob_match(&pattern, &name),
                    placement::glob_match(&pattern, &name)
                );
            }
            prop_assert!(glob_match("*", &name));
            prop_assert!(glob_match(&name, &name));
            Ok(())
        },
    );
    let limits = LimitsConfig {
        images: vec![
            "hearth-worker:*".into(),
            "registry.example.com/models/*".into(),
        ],
        tenant_capabilities: [("ops".to_owned(), vec!["SYS_PTRACE".to_owned()])].into(),
        ..LimitsConfig::default()
    };
    check(
        "limits: checked specs",
        n,
        (any_spec(), prop_oneof![Just("ops"), Just("default")]),
        |(s, tenant)| {
            let Ok(checked) = convert::session_spec(Some(s)) else {
                return Ok(());
            };
            let spec = checked.spec;
            let result = limits.check_spec(tenant, "spec", &spec);
            let gpus_ok = spec.gpus.as_ref().map_or(0, |g| g.count) <= limits.max_gpus_per_session;
            let image_ok = limits.image_allowed(&spec.image);
            let caps = spec
                .security
                .as_ref()
                .map(|s| s.add_capabilities.clone())
                .unwrap_or_default();
            let caps_ok = caps.iter().all(|c| tenant == "ops" && c == "SYS_PTRACE");
            match result {
                Ok(()) => prop_assert!(gpus_ok && image_ok && caps_ok),
                Err(Error::InvalidArgument { field, reason }) => {
                    prop_assert!(!gpus_ok);
                    prop_assert_eq!(field, "spec.gpus.count");
                    prop_assert!(reason.contains("limits.max_gpus_per_session"));
                }
                Err(Error::NotAllowed { field, reason }) => {
                    prop_assert!(gpus_ok && !(image_ok && caps_ok));
                    prop_assert!(
                        field == "spec.image"
                            || field.starts_with("spec.security.add_capabilities["),
                        "{field}"
                    );
                    prop_assert!(reason.contains("limits."), "{reason}");
                }
                Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
            Ok(())
        },
    );
}

/// Sizes at the edge of overflow: the largest whole number a unit allows, with a fraction.
fn edge_size() -> impl Strategy<Value = String> {
    let units: Vec<(&str, u128)> = vec![
        ("", 1),
        ("k", 1_000),
        ("ki", 1 << 10),
        ("g", 1_000_000_000),
        ("t", 1_000_000_000_000),
        ("ti", 1 << 40),
    ];
    (
        proptest::sample::select(units),
        0u128..3,
        "[0-9]{1,18}",
        prop_oneof![Just(u128::MAX), Just(u128::from(u64::MAX))],
    )
        .prop_map(|((unit, multiplier), below, fraction, max)| {
            format!("{}.{fraction}{unit}", max / multiplier - below)
        })
}

fn size_properties(n: u32) {
    check(
        "size::parse: any input",
        n,
        prop_oneof![
            edge_size(),
            text(24),
            "[0-9]{1,45}(\\.[0-9]{1,20})? ?(|b|k|kb|ki|kib|m|mb|mi|mib|g|gb|gi|gib|t|tb|ti|tib|x)"
        ],
        |input| {
            let _ = hearth_sdk::size::parse(&input);
            Ok(())
        },
    );
    let units: Vec<(&str, u64)> = vec![
        ("", 1),
        ("B", 1),
        ("KB", 1_000),
        ("KiB", 1 << 10),
        ("M", 1_000_000),
        ("Mi", 1 << 20),
        ("GB", 1_000_000_000),
        ("GiB", 1 << 30),
        ("T", 1_000_000_000_000),
        ("TiB", 1 << 40),
    ];
    check(
        "size::parse: valid sizes",
        n,
        (
            0u64..1 << 24,
            proptest::sample::select(units),
            any::<bool>(),
        ),
        |(number, (unit, multiplier), space)| {
            let input = format!("{number}{}{unit}", if space { " " } else { "" });
            prop_assert_eq!(hearth_sdk::size::parse(&input), Ok(number * multiplier));
            let half = format!("{number}.5{unit}");
            prop_assert_eq!(
                hearth_sdk::size::parse(&half),
                Ok(number * multiplier + multiplier / 2)
            );
            Ok(())
        },
    );
}

/// Stack for each property thread.
const STACK: usize = 32 << 20;

/// Every property, split over two threads, with the total count of executed cases.
#[test]
fn every_conversion_holds_its_properties() {
    // Cases per property, tuned so the run stays well under a minute in a debug build
    // on two busy cores while executing more than MIN_CASES cases in all.
    let n: u32 = std::env::var("HEARTH_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        // Nested strategies (a whole spec) are deep recursions in a debug build: more
        // stack than a spawned thread's default 2 MiB.
        let spawn = |f: fn(u32)| {
            std::thread::Builder::new()
                .stack_size(STACK)
                .spawn_scoped(scope, move || f(n))
                .expect("spawning a property thread")
        };
        let a = spawn(|n| {
            spec_properties(n);
            label_properties(n);
            size_properties(n);
        });
        let b = spawn(|n| {
            turn_properties(n);
            id_properties(n);
            hello_properties(n);
            page_properties(n);
            limits_properties(n);
        });
        for handle in [a, b] {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let total = CASES.load(Ordering::Relaxed);
    println!(
        "property cases: {total} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        total >= MIN_CASES,
        "only {total} property cases ran; at least {MIN_CASES} are expected"
    );
}
