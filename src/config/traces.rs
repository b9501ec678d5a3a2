//! OpenTelemetry tracing, configured by the standard OTEL_* variables (the
//! OpenTelemetry specification's "SDK environment variables"): on when an
//! OTLP endpoint is set (or `OTEL_TRACES_EXPORTER=otlp`), off otherwise and
//! with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.

use super::env::{ratio, Env};
use super::ConfigError;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318), the specification's
    /// default.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Its name in OTEL_EXPORTER_OTLP_PROTOCOL.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which traces are kept (OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    /// This share of trace ids, 0 to 1.
    TraceIdRatio(f64),
    /// The caller's decision (a sampled `traceparent`) when there is one,
    /// else the inner sampler's.
    ParentBased(ParentlessSampler),
}

/// A parent-based sampler's choice for requests without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentlessSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

// The ratios are checked to lie in 0..=1 (never NaN).
impl Eq for TraceSampler {}
impl Eq for ParentlessSampler {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub protocol: OtlpProtocol,
    /// The URL spans are sent to: the collector itself for gRPC, the full
    /// `/v1/traces` URL for HTTP.
    pub endpoint: String,
    /// OTEL_SERVICE_NAME (default `rate-limiter`).
    pub service_name: String,
    pub sampler: TraceSampler,
    /// Further resource attributes: `service.namespace` and
    /// `service.instance.id` from envoyproxy/ratelimit's TRACING_* settings.
    pub resource: Vec<(&'static str, String)>,
}

/// The trace settings, or None when tracing is off.
pub(super) fn trace_settings(env: &Env<'_>) -> Result<Option<TraceSettings>, ConfigError> {
    let disabled = env.bool("OTEL_SDK_DISABLED")?;
    let exporter = env.optional("OTEL_TRACES_EXPORTER", |v| match v {
        "otlp" => Ok(true),
        "none" => Ok(false),
        _ => Err("expected otlp or none (the only exporters of this service)".into()),
    })?;
    let protocol_of = |name: &'static str| {
        env.optional(name, |v| match v {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Err("http/json is not supported: use grpc or http/protobuf".into()),
            _ => Err("expected grpc or http/protobuf".into()),
        })
    };
    // envoyproxy/ratelimit's names (Envoy Gateway sets them) fill what the
    // OTEL_* variables leave unset.
    let legacy_protocol = match env.choice("TRACING_EXPORTER_PROTOCOL")? {
        Some("grpc") if env.get("TRACING_EXPORTER_PROTOCOL").is_some() => Some(OtlpProtocol::Grpc),
        Some("http") if env.get("TRACING_EXPORTER_PROTOCOL").is_some() => {
            Some(OtlpProtocol::HttpProtobuf)
        }
        _ => None,
    };
    let protocol = protocol_of("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?
        .or(protocol_of("OTEL_EXPORTER_OTLP_PROTOCOL")?)
        .or(legacy_protocol)
        .unwrap_or(OtlpProtocol::HttpProtobuf);
    let url = |name: &'static str| {
        env.optional(name, |v| {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(v.trim_end_matches('/').to_owned())
            } else {
                Err("expected an http:// or https:// URL".into())
            }
        })
    };
    let traces_endpoint = url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?;
    let base_endpoint = url("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let service_name = env
        .get("OTEL_SERVICE_NAME")
        .or(env.get("TRACING_SERVICE_NAME"))
        .or(env.value("OTEL_SERVICE_NAME"))
        .unwrap_or_default();
    let ratio = env.parse("OTEL_TRACES_SAMPLER_ARG", ratio)?;
    let legacy_rate = env.optional("TRACING_SAMPLING_RATE", super::env::ratio)?;
    let legacy_enabled = env.bool("TRACING_ENABLED")?;
    let sampler = env.parse("OTEL_TRACES_SAMPLER", |v| {
        if let (Some(rate), true) = (legacy_rate, env.get("OTEL_TRACES_SAMPLER").is_none()) {
            return Ok(TraceSampler::ParentBased(ParentlessSampler::TraceIdRatio(
                rate,
            )));
        }
        Ok(match v {
            "always_on" => TraceSampler::AlwaysOn,
            "always_off" => TraceSampler::AlwaysOff,
            "traceidratio" => TraceSampler::TraceIdRatio(ratio),
            "parentbased_always_on" => TraceSampler::ParentBased(ParentlessSampler::AlwaysOn),
            "parentbased_always_off" => TraceSampler::ParentBased(ParentlessSampler::AlwaysOff),
            "parentbased_traceidratio" => {
                TraceSampler::ParentBased(ParentlessSampler::TraceIdRatio(ratio))
            }
            _ => {
                return Err("expected always_on, always_off, traceidratio, \
                                parentbased_always_on, parentbased_always_off or \
                                parentbased_traceidratio"
                    .into())
            }
        })
    })?;
    let wanted =
        exporter.unwrap_or(legacy_enabled || traces_endpoint.is_some() || base_endpoint.is_some());
    if disabled || !wanted {
        return Ok(None);
    }
    // The specification's rules: a signal's own endpoint is used as it is;
    // the base endpoint gets the signal's path over HTTP.
    let endpoint = match (protocol, traces_endpoint, base_endpoint) {
        (_, Some(url), _) => url,
        (OtlpProtocol::Grpc, None, Some(base)) => base,
        (OtlpProtocol::HttpProtobuf, None, Some(base)) => format!("{base}/v1/traces"),
        (OtlpProtocol::Grpc, None, None) => "http://localhost:4317".to_owned(),
        (OtlpProtocol::HttpProtobuf, None, None) => "http://localhost:4318/v1/traces".to_owned(),
    };
    Ok(Some(TraceSettings {
        protocol,
        endpoint,
        service_name,
        sampler,
        resource: [
            ("service.namespace", env.get("TRACING_SERVICE_NAMESPACE")),
            (
                "service.instance.id",
                env.get("TRACING_SERVICE_INSTANCE_ID"),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn traces(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = |name: &str| map.get(name).cloned();
        trace_settings(&Env(&lookup))
    }

    #[test]
    fn off_unless_an_endpoint_or_the_exporter_is_set() {
        assert_eq!(traces(&[]).unwrap(), None);
        assert_eq!(traces(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let on = traces(&[("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://localhost:4318/v1/traces");
        for off in [
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
        ] {
            assert_eq!(traces(&off).unwrap(), None, "{off:?}");
        }
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let http = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (http.protocol, http.endpoint.as_str()),
            (
                OtlpProtocol::HttpProtobuf,
                "http://collector:4318/v1/traces"
            )
        );
        let grpc = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (grpc.protocol, grpc.endpoint.as_str()),
            (OtlpProtocol::Grpc, "http://collector:4317")
        );
        let own = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (own.protocol, own.endpoint.as_str()),
            (OtlpProtocol::HttpProtobuf, "http://b:9999/custom")
        );
        assert_eq!(own.service_name, "rate-limiter");
        assert_eq!(
            own.sampler,
            TraceSampler::ParentBased(ParentlessSampler::AlwaysOn)
        );
    }

    #[test]
    fn envoyproxy_ratelimits_tracing_settings_fill_the_gaps() {
        let eg = traces(&[
            ("TRACING_ENABLED", "true"),
            ("TRACING_SERVICE_NAME", "envoy-ratelimit"),
            ("TRACING_SERVICE_NAMESPACE", "envoy-gateway-system"),
            ("TRACING_SERVICE_INSTANCE_ID", "envoy-ratelimit-5d8f-abcde"),
            ("TRACING_SAMPLING_RATE", "0.5"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(eg.service_name, "envoy-ratelimit");
        assert_eq!(
            (eg.protocol, eg.endpoint.as_str()),
            (OtlpProtocol::Grpc, "http://otel-collector:4317")
        );
        assert_eq!(
            eg.sampler,
            TraceSampler::ParentBased(ParentlessSampler::TraceIdRatio(0.5))
        );
        assert_eq!(
            eg.resource,
            vec![
                ("service.namespace", "envoy-gateway-system".to_owned()),
                (
                    "service.instance.id",
                    "envoy-ratelimit-5d8f-abcde".to_owned()
                )
            ]
        );
        // Enabled alone: the OTLP default endpoint.
        let on = traces(&[("TRACING_ENABLED", "true")]).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://localhost:4318/v1/traces");
        // The OTEL_* variables win.
        let otel = traces(&[
            ("TRACING_ENABLED", "true"),
            ("TRACING_SERVICE_NAME", "old"),
            ("OTEL_SERVICE_NAME", "new"),
            ("TRACING_SAMPLING_RATE", "0.5"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(otel.service_name, "new");
        assert_eq!(otel.sampler, TraceSampler::AlwaysOff);
        assert_eq!(traces(&[("TRACING_ENABLED", "false")]).unwrap(), None);
        let err = traces(&[("TRACING_SAMPLING_RATE", "7")]).unwrap_err();
        assert!(err.to_string().contains("TRACING_SAMPLING_RATE"), "{err}");
    }

    #[test]
    fn samplers_and_bad_values() {
        let with = |sampler: &str, arg: &str| {
            traces(&[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_TRACES_SAMPLER", sampler),
                ("OTEL_TRACES_SAMPLER_ARG", arg),
            ])
        };
        assert_eq!(
            with("parentbased_traceidratio", "0.25")
                .unwrap()
                .unwrap()
                .sampler,
            TraceSampler::ParentBased(ParentlessSampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            with("always_off", "").unwrap().unwrap().sampler,
            TraceSampler::AlwaysOff
        );
        for (name, value) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_SDK_DISABLED", "perhaps"),
        ] {
            let err = traces(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }
}
