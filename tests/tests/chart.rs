//! The Helm chart (`charts/skein`), rendered by a real helm (installed by
//! `scripts/setup.sh --tests`): it lints; its objects are what a Raft cluster on Kubernetes
//! needs (a StatefulSet started in parallel with probes on /healthz and /readyz, a headless
//! Service publishing unready pods, a PodDisruptionBudget keeping a quorum); the config files
//! it renders are accepted by `skein check-config` in each pod's environment; its schema and
//! checks refuse bad values with the field named; and `k8s/skein.yaml` is its current output.

use std::path::PathBuf;
use std::process::Command;

use skein_tests::{cached_tool, manifest_dir, skein_bin};

fn helm() -> PathBuf {
    cached_tool("helm", "3.17.2")
}

fn chart() -> PathBuf {
    manifest_dir().join("../charts/skein")
}

/// `helm template` with `args`: (success, stdout, stderr).
fn template(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(helm())
        .args(["template", "skein"])
        .arg(chart())
        .args(["--namespace", "skein"])
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("helm (scripts/setup.sh --tests installs it): {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The documents of a rendered chart, as JSON (read by Debian's Python and PyYAML).
fn objects(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("r.yaml");
    std::fs::write(&file, yaml)?;
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn find<'a>(objs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_chart_lints_and_renders_a_raft_cluster() -> anyhow::Result<()> {
    let lint = Command::new(helm()).arg("lint").arg(chart()).output()?;
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let (ok, yaml, err) = template(&[
        "--set",
        "sender.replicas=1",
        "--set",
        "sender.sourceIps[0].ip=127.0.0.1",
        "--set",
        "sender.sourceIps[0].ehlo=mta1.example.com",
    ])?;
    assert!(ok, "{err}");
    let objs = objects(&yaml)?;
    let sts = find(&objs, "StatefulSet", "skein-node");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let c = &spec["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["startupProbe"]["failureThreshold"].as_u64().unwrap() >= 30);
    assert_eq!(
        spec["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    let headless = find(&objs, "Service", "skein-node");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let pdb = find(&objs, "PodDisruptionBudget", "skein-node");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let smtp = find(&objs, "Service", "skein-smtp");
    assert_eq!(smtp["spec"]["ports"][0]["port"], 25);
    let edge =
        &find(&objs, "Deployment", "skein-edge")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(edge["readinessProbe"]["httpGet"]["path"], "/readyz");
    let sender =
        &find(&objs, "Deployment", "skein-sender")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(sender["readinessProbe"]["httpGet"]["path"], "/readyz");

    // Each pod's config, as the pod sees it, passes skein's own check.
    let cm = &find(&objs, "ConfigMap", "skein-config")["data"];
    let dir = tempfile::tempdir()?;
    for (file, pod) in [
        ("node.toml", "skein-node-0"),
        ("node.toml", "skein-node-2"),
        ("edge.toml", "skein-edge-abc"),
        ("sender.toml", "skein-sender-abc"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, cm[file].as_str().unwrap())?;
        let out = Command::new(skein_bin())
            .arg("check-config")
            .arg(&path)
            .env("POD_NAME", pod)
            .env("HOSTNAME", pod)
            .output()?;
        assert!(
            out.status.success(),
            "{file} in {pod}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            cm[file]
        );
    }
    let node = cm["node.toml"].as_str().unwrap();
    assert_eq!(node.matches("{ id = ").count(), 3, "{node}");
    assert!(node.contains("advertise = \"${POD_NAME}.skein-node.skein.svc.cluster.local:7070\""));
    // Membership follows the StatefulSet, under an identity that may read it and its pods.
    assert!(node.contains(
        "[node.kubernetes]\nstatefulset = \"skein-node\"\n\
         address = \"{pod}.skein-node.{namespace}.svc.cluster.local:7070\""
    ));
    assert_eq!(spec["template"]["spec"]["serviceAccountName"], "skein-node");
    let role = find(&objs, "Role", "skein-node");
    assert_eq!(role["rules"][0]["resources"][0], "statefulsets");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get"]));
    assert_eq!(role["rules"][1]["verbs"], serde_json::json!(["list"]));
    let binding = find(&objs, "RoleBinding", "skein-node");
    assert_eq!(binding["subjects"][0]["name"], "skein-node");

    // Five replicas, three founders: pods 4 and 5 join; without the reconciler, no RBAC.
    let (ok, yaml, err) = template(&[
        "--set",
        "node.replicas=5",
        "--set",
        "node.kubernetesMembership=false",
    ])?;
    assert!(ok, "{err}");
    let objs = objects(&yaml)?;
    let node = find(&objs, "ConfigMap", "skein-config")["data"]["node.toml"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(node.matches("{ id = ").count(), 3, "{node}");
    assert!(!node.contains("[node.kubernetes]"), "{node}");
    assert!(!objs.iter().any(|o| o["kind"] == "Role"));
    let sts = find(&objs, "StatefulSet", "skein-node");
    assert_eq!(
        sts["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    Ok(())
}

#[test]
fn bad_values_are_refused_naming_the_field() -> anyhow::Result<()> {
    for (set, says) in [
        ("node.replicas=2", "node.replicas"),
        ("node.replicas=two", "node.replicas"),
        ("node.storage.size=lots", "node.storage.size"),
        ("edge.service.type=Magic", "edge.service.type"),
        ("node.typo=1", "typo"),
        ("sender.replicas=1", "sender.sourceIps"),
        ("grafanaDashboard.label=-bad-", "grafanaDashboard.label"),
    ] {
        let (ok, _, err) = template(&["--set", set])?;
        assert!(!ok && err.contains(says), "{set}: {err}");
    }
    Ok(())
}

/// `k8s/skein.yaml` is the chart's output with its defaults (after its two header lines).
#[test]
fn the_plain_manifests_are_the_charts_current_output() -> anyhow::Result<()> {
    let (ok, yaml, err) = template(&[])?;
    assert!(ok, "{err}");
    let checked_in = std::fs::read_to_string(manifest_dir().join("../k8s/skein.yaml"))?;
    let body: String = checked_in
        .split_inclusive('\n')
        .skip_while(|l| l.starts_with('#') && !l.starts_with("# Source:"))
        .collect();
    assert!(
        body == yaml,
        "k8s/skein.yaml is stale: regenerate it (see its header)"
    );
    Ok(())
}

/// With `grafanaDashboard.enabled`, the dashboard goes in a ConfigMap labelled for Grafana's
/// sidecar, the JSON whole; without it, nothing.
#[test]
fn the_grafana_dashboard_is_a_configmap_on_demand() -> anyhow::Result<()> {
    let (ok, yaml, err) = template(&["--set", "grafanaDashboard.enabled=true"])?;
    assert!(ok, "{err}");
    let objs = objects(&yaml)?;
    let cm = find(&objs, "ConfigMap", "skein-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm}");
    let json: serde_json::Value = serde_json::from_str(cm["data"]["skein.json"].as_str().unwrap())?;
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        chart().join("dashboards/skein.json"),
    )?)?;
    assert_eq!(json, file);
    assert!(json["panels"].as_array().unwrap().len() >= 10);
    let (ok, yaml, err) = template(&[])?;
    assert!(ok, "{err}");
    assert!(!yaml.contains("skein-dashboard"));
    Ok(())
}

/// Realistic value sets, as `--set` arguments.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    // Production by hand: Secrets for every certificate, senders on the host network with
    // two IPs, edges autoscaled, the dashboard.
    &[
        "clusterTls.nodeSecret=skein-node-pki",
        "clusterTls.edgeSecret=skein-edge-pki",
        "clusterTls.senderSecret=skein-sender-pki",
        "edge.tlsSecret=mx-tls",
        "edge.service.type=LoadBalancer",
        "edge.autoscaling.enabled=true",
        "sender.replicas=2",
        "sender.hostNetwork=true",
        "sender.sourceIps[0].ip=192.0.2.10",
        "sender.sourceIps[0].ehlo=mta1.example.com",
        "sender.sourceIps[1].ip=192.0.2.11",
        "sender.sourceIps[1].ehlo=mta2.example.com",
        "grafanaDashboard.enabled=true",
    ],
    // cert-manager makes the certificates; traces go to a collector.
    &[
        "tracing.otlpEndpoint=http://otel-collector.observability:4317",
        "certManager.enabled=true",
        "certManager.issuerRef.kind=ClusterIssuer",
        "certManager.smtpDnsNames[0]=mx.example.com",
        "sender.replicas=1",
        "sender.sourceIps[0].ip=192.0.2.10",
        "sender.sourceIps[0].ehlo=mta1.example.com",
    ],
    // Five queue nodes, membership by hand.
    &["node.replicas=5", "node.kubernetesMembership=false"],
];

fn set_args<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    sets.iter().flat_map(|s| ["--set", s]).collect()
}

/// Every rendering of the realistic value sets passes Kubernetes' own schemas (strict: no
/// unknown fields) for the oldest and a recent supported version, checked by
/// kubernetes-validate (installed by `scripts/setup.sh --tests`). Custom resources
/// (cert-manager's, the Prometheus Operator's) have no schema there and are checked by the
/// assertions below instead.
#[test]
fn every_rendering_passes_the_kubernetes_schemas() -> anyhow::Result<()> {
    let validate = cached_tool("kubernetes-validate", "1.37.0");
    let dir = tempfile::tempdir()?;
    for (i, sets) in VALUE_SETS.iter().enumerate() {
        let (ok, yaml, err) = template(&set_args(sets))?;
        assert!(ok, "{sets:?}: {err}");
        let objs = objects(&yaml)?;
        let file = dir.path().join(format!("set{i}.yaml"));
        std::fs::write(&file, &yaml)?;
        for version in ["1.25.0", "1.32.0"] {
            let out = Command::new(&validate)
                .args(["--strict", "-k", version])
                .arg(&file)
                .output()
                .map_err(|e| {
                    anyhow::anyhow!("kubernetes-validate (scripts/setup.sh --tests): {e}")
                })?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{sets:?} on {version}:\n{text}");
            let core = objs
                .iter()
                .filter(|o| {
                    let v = o["apiVersion"].as_str().unwrap_or("");
                    !v.starts_with("cert-manager.io/") && !v.starts_with("monitoring.coreos.com/")
                })
                .count();
            assert_eq!(
                text.matches(" passed for resource ").count(),
                core,
                "{sets:?}: {text}"
            );
        }
    }
    Ok(())
}

/// cert-manager: a Certificate per role naming the role as `skein certs issue` does (a
/// sender's with its source IPs), mounted under the names `[cluster_tls]` reads, and the
/// edges' SMTP certificate; the autoscaler replaces the edges' replica count.
#[test]
fn cert_manager_issues_every_roles_certificate_and_edges_autoscale() -> anyhow::Result<()> {
    let mut sets = VALUE_SETS[2].to_vec();
    sets.push("edge.autoscaling.enabled=true");
    let (ok, yaml, err) = template(&set_args(&sets))?;
    assert!(ok, "{err}");
    let objs = objects(&yaml)?;
    for role in ["node", "edge", "sender"] {
        let c = find(&objs, "Certificate", &format!("skein-{role}-pki"));
        assert_eq!(
            c["spec"]["dnsNames"],
            serde_json::json!([format!("{role}.skein.invalid")])
        );
        assert_eq!(c["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(c["spec"]["secretName"], format!("skein-{role}-pki"));
        let usages = c["spec"]["usages"].as_array().unwrap();
        assert!(usages.contains(&"client auth".into()) && usages.contains(&"server auth".into()));
    }
    let sender = find(&objs, "Certificate", "skein-sender-pki");
    assert_eq!(
        sender["spec"]["ipAddresses"],
        serde_json::json!(["192.0.2.10"])
    );
    let smtp = find(&objs, "Certificate", "skein-smtp-tls");
    assert_eq!(
        smtp["spec"]["dnsNames"],
        serde_json::json!(["mx.example.com"])
    );
    let edge = find(&objs, "Deployment", "skein-edge");
    assert!(edge["spec"].get("replicas").is_none(), "{}", edge["spec"]);
    let volumes = edge["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let pki = volumes
        .iter()
        .find(|v| v["name"] == "pki")
        .expect("pki volume");
    assert_eq!(pki["secret"]["secretName"], "skein-edge-pki");
    assert_eq!(
        pki["secret"]["items"][1],
        serde_json::json!({"key": "tls.crt", "path": "cert.pem"})
    );
    let smtp_tls = volumes
        .iter()
        .find(|v| v["name"] == "smtp-tls")
        .expect("smtp volume");
    assert_eq!(smtp_tls["secret"]["secretName"], "skein-smtp-tls");
    let cm = &find(&objs, "ConfigMap", "skein-config")["data"];
    for file in ["node.toml", "edge.toml", "sender.toml"] {
        assert!(
            cm[file].as_str().unwrap().contains("[cluster_tls]"),
            "{file}"
        );
    }
    assert!(!cm["node.toml"]
        .as_str()
        .unwrap()
        .contains("insecure = true"));
    let hpa = find(&objs, "HorizontalPodAutoscaler", "skein-edge");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "skein-edge");
    assert_eq!(hpa["spec"]["maxReplicas"], 10);
    // Every role exports its spans to the collector.
    for (kind, name) in [
        ("StatefulSet", "skein-node"),
        ("Deployment", "skein-edge"),
        ("Deployment", "skein-sender"),
    ] {
        let env = &find(&objs, kind, name)["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array().unwrap().contains(&serde_json::json!({
                "name": "OTEL_EXPORTER_OTLP_ENDPOINT",
                "value": "http://otel-collector.observability:4317"
            })),
            "{name}: {env}"
        );
    }
    // Offline (and on any current cluster) the disruption budget is policy/v1.
    assert_eq!(
        find(&objs, "PodDisruptionBudget", "skein-node")["apiVersion"],
        "policy/v1"
    );
    Ok(())
}
