//! The deployment files, checked statically (no Docker engine here): every
//! file parses, and every service, port, healthcheck, environment variable
//! and path refers to something that exists.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    value.apply_merge().unwrap();
    value
}

/// Every setting the service reads: the names in .env.example (a unit test
/// in src/config.rs keeps that file equal to what the code reads).
fn settings() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim().to_owned())
        .collect()
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Checks one compose file; returns its service names.
fn check_compose(path: &str) -> BTreeSet<String> {
    let doc = yaml(path);
    let services = doc["services"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{path}: no services"));
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    let known = settings();
    let mut service_instances = 0;
    for (name, service) in services {
        let name = str_of(name);
        assert!(
            service["image"].is_string() || service["build"].is_string(),
            "{path}: {name} has neither image nor build"
        );
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{path}: {name} has no healthcheck"
        );
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, cond) in deps {
                let dep = str_of(dep);
                assert!(
                    names.contains(&dep),
                    "{path}: {name} depends on unknown {dep}"
                );
                assert_eq!(
                    cond["condition"], "service_healthy",
                    "{path}: {name} -> {dep}"
                );
            }
        }
        if service["build"].is_string() {
            service_instances += 1;
            assert_eq!(
                service["build"], ".",
                "{path}: {name} builds the Dockerfile"
            );
            let test: Vec<String> = service["healthcheck"]["test"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(str_of)
                .collect();
            assert!(
                test.iter().any(|t| t.ends_with(":8000/livez")),
                "{path}: {name} healthcheck on /livez"
            );
            let env = service["environment"].as_mapping().expect("environment");
            for (key, value) in env {
                let key = str_of(key);
                assert!(
                    known.contains(&key),
                    "{path}: {name} sets {key}, which the service does not read"
                );
                let value = str_of(value);
                // Addresses point at services of this file.
                match key.as_str() {
                    "REDIS_HOST" => assert!(names.contains(&value), "{path}: REDIS_HOST={value}"),
                    "REDIS_SENTINELS" | "REDIS_CLUSTER_NODES" => {
                        for addr in value.split(',') {
                            let host = addr.rsplit_once(':').unwrap().0;
                            assert!(names.contains(host), "{path}: {key} names unknown {host}");
                        }
                    }
                    _ => {}
                }
            }
            // The values themselves are valid settings.
            let lookup: std::collections::HashMap<String, String> =
                env.iter().map(|(k, v)| (str_of(k), str_of(v))).collect();
            rate_limiter::config::Settings::from_lookup(|k| lookup.get(k).cloned())
                .unwrap_or_else(|e| panic!("{path}: {name}: {e}"));
            // The container ports the service listens on: the settings'
            // PORT and GRPC_PORT (8000 and 8081 unless set).
            let settings =
                rate_limiter::config::Settings::from_lookup(|k| lookup.get(k).cloned()).unwrap();
            let listening = [settings.port, settings.envoy.grpc_port];
            for port in service["ports"].as_sequence().expect("ports") {
                let port = str_of(port);
                let inside: u16 = port.rsplit(':').next().unwrap().parse().unwrap();
                assert!(
                    listening.contains(&inside),
                    "{path}: {name} publishes {port}, the service listens on {listening:?}"
                );
            }
        }
    }
    assert!(service_instances >= 1, "{path}: no instance of the service");
    names
}

#[test]
fn docker_compose_runs_redis_and_the_service() {
    let names = check_compose("docker-compose.yml");
    assert!(names.contains("redis") && names.contains("rate-limiter"));
}

#[test]
fn docker_compose_sentinel_has_a_master_a_replica_three_sentinels_and_two_instances() {
    let path = "docker-compose.sentinel.yml";
    let names = check_compose(path);
    for name in [
        "redis-master",
        "redis-replica",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
        "rate-limiter-1",
        "rate-limiter-2",
    ] {
        assert!(names.contains(name), "{path}: missing {name}");
    }
    let doc = yaml(path);
    let replica: Vec<String> = doc["services"]["redis-replica"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let at = replica
        .iter()
        .position(|a| a == "--replicaof")
        .expect("--replicaof");
    assert_eq!(replica[at + 1], "redis-master");
    let sentinel_script = str_of(&doc["services"]["sentinel-1"]["command"][2]);
    assert!(sentinel_script.contains("sentinel monitor mymaster redis-master 6379 2"));
    let instances_master =
        str_of(&doc["services"]["rate-limiter-1"]["environment"]["REDIS_SENTINEL_MASTER"]);
    assert_eq!(instances_master, "mymaster");
    let ports: BTreeSet<String> = ["rate-limiter-1", "rate-limiter-2"]
        .iter()
        .map(|s| str_of(&doc["services"][*s]["ports"][0]))
        .collect();
    assert_eq!(
        ports.len(),
        2,
        "the two instances publish different host ports"
    );
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_livez_healthcheck() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    // The build image is at least the Rust the crate needs.
    let manifest = read("Cargo.toml");
    let needed = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        froms[0].contains(&format!("rust:{needed}")),
        "{} vs rust-version {needed}",
        froms[0]
    );
    assert!(text.contains("cargo build --release --locked"));
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert_ne!(user.trim(), "root");
    assert_ne!(user.trim(), "0");
    let health = text.split("\nHEALTHCHECK ").nth(1).expect("HEALTHCHECK");
    assert!(health.contains("http://127.0.0.1:8000/livez"));
    assert!(text.contains("EXPOSE 8000 8081"));
    // Every COPY source from the build context exists.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                root().join(source).exists(),
                "Dockerfile copies missing {source}"
            );
        }
    }
    // Every file the binary embeds (include_str!, include_bytes! outside
    // the unit tests) lies in a folder the build stage copies.
    let copied: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[1..parts.len() - 1]
                .iter()
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for (file, embedded) in embedded_files(&root().join("src")) {
        let relative = embedded
            .strip_prefix(std::fs::canonicalize(root()).unwrap())
            .unwrap()
            .to_owned();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            copied.iter().any(|c| c == top),
            "{} embeds {}, which the Dockerfile does not copy",
            file.display(),
            relative.display()
        );
    }
    let binary = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap();
    assert!(binary.contains("/usr/local/bin/rate-limiter"));
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}

#[test]
fn kubernetes_manifests_fit_together() {
    let text = read("deploy/kubernetes/rate-limiter.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            use serde::Deserialize;
            Value::deserialize(d).unwrap()
        })
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let (config, deployment, service) = (kind("ConfigMap"), kind("Deployment"), kind("Service"));

    // The rules in the ConfigMap are a valid rules file.
    let rules = str_of(&config["data"]["rules.toml"]);
    rate_limiter::limiter::Rules::parse("configmap rules.toml", &rules).expect("valid rules");

    let spec = &deployment["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]
    );
    assert_eq!(service["spec"]["selector"], spec["selector"]["matchLabels"]);
    let container = &spec["template"]["spec"]["containers"][0];
    let port_name = str_of(&container["ports"][0]["name"]);
    assert_eq!(str_of(&container["ports"][0]["containerPort"]), "8000");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_of(&container[probe]["httpGet"]["port"]), port_name);
    }
    assert_eq!(
        str_of(&service["spec"]["ports"][0]["targetPort"]),
        port_name
    );

    let known = settings();
    let env: std::collections::HashMap<String, String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (str_of(&e["name"]), str_of(&e["value"])))
        .collect();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "the Deployment sets {name}, which the service does not read"
        );
    }
    assert_eq!(env["PORT"], "8000");
    // RATE_LIMIT_CONFIG points into the mounted ConfigMap, at a key it has.
    let mount = str_of(&container["volumeMounts"][0]["mountPath"]);
    let volume = str_of(&container["volumeMounts"][0]["name"]);
    let volumes = spec["template"]["spec"]["volumes"].as_sequence().unwrap();
    let source = volumes
        .iter()
        .find(|v| str_of(&v["name"]) == volume)
        .expect("the volume");
    assert_eq!(source["configMap"]["name"], config["metadata"]["name"]);
    assert_eq!(env["RATE_LIMIT_CONFIG"], format!("{mount}/rules.toml"));
    // Everything else in env is a valid setting (the file need not exist here).
    let lookup: std::collections::HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k != "RATE_LIMIT_CONFIG")
        .collect();
    let lookup: std::collections::HashMap<String, String> = lookup
        .into_iter()
        .filter(|(k, _)| k != "RUNTIME_ROOT")
        .collect();
    rate_limiter::config::Settings::from_lookup(|k| lookup.get(k).cloned())
        .expect("valid settings");

    // The gRPC port: in the container, named, and in the Service.
    let ports = container["ports"].as_sequence().unwrap();
    let grpc = ports
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a grpc container port");
    assert_eq!(str_of(&grpc["containerPort"]), env_grpc_port(container));
    let service_grpc = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a grpc Service port");
    assert_eq!(str_of(&service_grpc["targetPort"]), "grpc");
    assert_eq!(str_of(&service_grpc["appProtocol"]), "grpc");

    // Envoy's YAML: the ConfigMap mounted at RUNTIME_ROOT/config loads.
    let envoy = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "rate-limiter-envoy")
        .expect("the Envoy ConfigMap");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "envoy")
        .expect("the Envoy volume mount");
    let root = env_value(container, "RUNTIME_ROOT");
    assert_eq!(str_of(&mount["mountPath"]), format!("{root}/config"));
    let config_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-envoy/config");
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir).unwrap();
    for (name, text) in envoy["data"].as_mapping().unwrap() {
        std::fs::write(config_dir.join(str_of(name)), str_of(text)).unwrap();
    }
    rate_limiter::limiter::rules::erl::check_dir(&config_dir, false).expect("valid Envoy YAML");
}

fn env_value(container: &Value, name: &str) -> String {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| str_of(&e["value"]))
        .unwrap_or_else(|| panic!("the Deployment sets no {name}"))
}

fn env_grpc_port(container: &Value) -> String {
    env_value(container, "GRPC_PORT")
}

/// deploy/istio: the EnvoyFilter asks the Kubernetes Service's gRPC port,
/// for a domain the Envoy ConfigMap defines, with a descriptor key its
/// rules use.
#[test]
fn istio_envoy_filters_ask_the_kubernetes_service() {
    let yaml_docs = |path: &str| -> Vec<Value> {
        serde_yaml::Deserializer::from_str(&read(path))
            .map(|d| {
                use serde::Deserialize;
                Value::deserialize(d).unwrap()
            })
            .collect()
    };
    let kubernetes = yaml_docs("deploy/kubernetes/rate-limiter.yaml");
    let istio = yaml_docs("deploy/istio/rate-limit.yaml");
    let service = kubernetes.iter().find(|d| d["kind"] == "Service").unwrap();
    let envoy_config = kubernetes
        .iter()
        .find(|d| d["metadata"]["name"] == "rate-limiter-envoy")
        .unwrap();
    let config_text = str_of(&envoy_config["data"]["ratelimit.yaml"]);
    let config: Value = serde_yaml::from_str(&config_text).unwrap();

    let filter = &istio[0]["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(filter["name"], "envoy.filters.http.ratelimit");
    let typed = &filter["typed_config"];
    assert_eq!(typed["domain"], config["domain"]);
    let cluster =
        str_of(&typed["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]);
    let grpc_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .map(|p| str_of(&p["port"]))
        .unwrap();
    let name = str_of(&service["metadata"]["name"]);
    assert_eq!(
        cluster,
        format!("outbound|{grpc_port}||{name}.default.svc.cluster.local")
    );
    assert_eq!(typed["rate_limit_service"]["transport_api_version"], "V3");

    let actions =
        &istio[1]["spec"]["configPatches"][0]["patch"]["value"]["rate_limits"][0]["actions"];
    let key = str_of(&actions[0]["request_headers"]["descriptor_key"]);
    let keys: Vec<String> = config["descriptors"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| str_of(&d["key"]))
        .collect();
    assert!(keys.contains(&key), "{key} is a key of the domain's rules");
}

#[test]
fn systemd_unit_runs_the_binary_and_reloads_with_sighup() {
    let text = read("deploy/systemd/rate-limiter.service");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}="))
    };
    assert_eq!(value("ExecStart"), "/usr/local/bin/rate-limiter");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert!(value("LimitNOFILE").parse::<u32>().unwrap() >= 10_000);
    assert!(value("EnvironmentFile").starts_with("/etc/rate-limiter/"));
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(text.contains(section));
    }
}

/// Traefik is not packaged here, so its configuration is checked against
/// the shape its documentation gives the file provider: a ForwardAuth
/// middleware asking /v1/forward-auth, used by a router, with a service.
#[test]
fn traefik_forward_auth_configuration_is_well_formed() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/traefik/dynamic.yml")).expect("YAML");
    let http = &doc["http"];
    let auth = &http["middlewares"]["rate-limit"]["forwardAuth"];
    let address = auth["address"].as_str().expect("forwardAuth.address");
    assert!(address.starts_with("http://") && address.ends_with("/v1/forward-auth"));
    // Traefik writes the forwarding headers itself (issue 19, item 2).
    assert_eq!(auth["trustForwardHeader"], serde_yaml::Value::Bool(false));
    let copied: Vec<&str> = auth["authResponseHeaders"]
        .as_sequence()
        .expect("authResponseHeaders")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(copied.contains(&"X-RateLimit-Remaining") && copied.contains(&"RateLimit"));
    // Only keys Traefik's ForwardAuth middleware documents.
    let known = [
        "address",
        "tls",
        "trustForwardHeader",
        "authResponseHeaders",
        "authResponseHeadersRegex",
        "authRequestHeaders",
        "addAuthCookiesToResponse",
        "headerField",
        "forwardBody",
        "maxBodySize",
        "preserveLocationHeader",
        "preserveRequestMethod",
    ];
    for key in auth.as_mapping().unwrap().keys() {
        assert!(known.contains(&key.as_str().unwrap()), "{key:?}");
    }
    let router = &http["routers"]["api"];
    assert!(router["rule"].as_str().unwrap().contains("PathPrefix"));
    let middlewares: Vec<&str> = router["middlewares"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(middlewares, ["rate-limit"]);
    let service = router["service"].as_str().unwrap();
    assert!(
        http["services"][service]["loadBalancer"]["servers"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );
}

/// The files embedded by the sources under `dir` (before any
/// `#[cfg(test)]`): (source file, embedded file), paths made absolute.
fn embedded_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(embedded_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for piece in code.split("include_").skip(1) {
            let Some(rest) = piece
                .strip_prefix("str!(\"")
                .or_else(|| piece.strip_prefix("bytes!(\""))
            else {
                continue;
            };
            let relative = &rest[..rest.find('"').unwrap()];
            let target = path.parent().unwrap().join(relative);
            let target = std::fs::canonicalize(&target)
                .unwrap_or_else(|e| panic!("{} embeds {relative}: {e}", path.display()));
            found.push((path.clone(), target));
        }
    }
    found
}

/// deploy/envoy-gateway: the EnvoyGateway configuration and the
/// BackendTrafficPolicy use the keys Envoy Gateway documents
/// (gateway.envoyproxy.io/v1alpha1), and the README's snippet is the
/// configuration's.
#[test]
fn envoy_gateway_files_use_envoy_gateways_keys_and_match_the_readme() {
    let config: Value =
        serde_yaml::from_str(&read("deploy/envoy-gateway/envoy-gateway.yaml")).unwrap();
    assert_eq!(config["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(
        config["metadata"]["name"].as_str(),
        Some("envoy-gateway-config")
    );
    let eg: Value =
        serde_yaml::from_str(config["data"]["envoy-gateway.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        eg["apiVersion"].as_str(),
        Some("gateway.envoyproxy.io/v1alpha1")
    );
    assert_eq!(eg["kind"].as_str(), Some("EnvoyGateway"));
    assert_eq!(eg["provider"]["type"].as_str(), Some("Kubernetes"));
    let container = &eg["provider"]["kubernetes"]["rateLimitDeployment"]["container"];
    let image = container["image"]
        .as_str()
        .expect("rateLimitDeployment.container.image");
    assert!(image.contains("rate-limiter"), "{image}");
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            rate_limiter::config::list::find(name).is_some(),
            "{name} is not a setting"
        );
    }
    assert_eq!(eg["rateLimit"]["backend"]["type"].as_str(), Some("Redis"));
    assert!(eg["rateLimit"]["backend"]["redis"]["url"]
        .as_str()
        .is_some());

    // The README's snippet: the same image and backend.
    let readme = read("README.md");
    let begin = "<!-- envoy-gateway:begin -->\n";
    let start = readme.find(begin).unwrap() + begin.len();
    let end = start + readme[start..].find("<!-- envoy-gateway:end -->").unwrap();
    let snippet: String = readme[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("```"))
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let shown: Value = serde_yaml::from_str(&snippet).unwrap();
    assert_eq!(shown["kind"], eg["kind"]);
    assert_eq!(
        shown["provider"]["kubernetes"]["rateLimitDeployment"]["container"]["image"],
        container["image"]
    );
    assert_eq!(shown["rateLimit"], eg["rateLimit"]);

    let policy: Value =
        serde_yaml::from_str(&read("deploy/envoy-gateway/backend-traffic-policy.yaml")).unwrap();
    assert_eq!(
        policy["apiVersion"].as_str(),
        Some("gateway.envoyproxy.io/v1alpha1")
    );
    assert_eq!(policy["kind"].as_str(), Some("BackendTrafficPolicy"));
    let target = &policy["spec"]["targetRefs"][0];
    assert_eq!(target["group"].as_str(), Some("gateway.networking.k8s.io"));
    assert!(matches!(
        target["kind"].as_str(),
        Some("HTTPRoute" | "GRPCRoute" | "Gateway")
    ));
    let rules = policy["spec"]["rateLimit"]["global"]["rules"]
        .as_sequence()
        .expect("spec.rateLimit.global.rules");
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(rule["limit"]["requests"].as_u64().is_some_and(|n| n > 0));
        let unit = rule["limit"]["unit"].as_str().unwrap();
        assert!(
            ["Second", "Minute", "Hour", "Day", "Month", "Year"].contains(&unit),
            "{unit}"
        );
        for selector in rule["clientSelectors"].as_sequence().unwrap() {
            let map = selector.as_mapping().unwrap();
            for (key, value) in map {
                match key.as_str().unwrap() {
                    "headers" => {
                        for header in value.as_sequence().unwrap() {
                            assert!(header["name"].as_str().is_some());
                            let kind = header["type"].as_str().unwrap_or("Exact");
                            assert!(
                                ["Exact", "Distinct", "RegularExpression"].contains(&kind),
                                "{kind}"
                            );
                            if kind != "Distinct" {
                                assert!(header["value"].as_str().is_some());
                            }
                        }
                    }
                    "sourceCIDR" => {
                        let cidr = value["value"].as_str().unwrap();
                        assert!(cidr.parse::<ipnet::IpNet>().is_ok(), "{cidr}");
                        assert!(matches!(value["type"].as_str(), Some("Exact" | "Distinct")));
                    }
                    other => panic!("clientSelectors key {other} is not Envoy Gateway's"),
                }
            }
        }
    }
}
