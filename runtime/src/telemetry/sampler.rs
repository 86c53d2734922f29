//! Which traces are sampled: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, read once
//! and given both to Switchboard's own spans and to the SDK that records the application's,
//! so the two never disagree about a trace.

use super::config;
use crate::error::Result;

/// A sampler of the OpenTelemetry specification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Samples this fraction of traces, chosen by trace id (as the SDK does).
    Ratio(f64),
    /// A span with a parent follows its parent's decision; a root follows the inner sampler.
    ParentBased(Root),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl Sampler {
    /// From the environment: the specification's default, `parentbased_always_on`, when
    /// unset; an error naming the variable for a value it does not know (the SDK would fall
    /// back to sampling everything).
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Sampler> {
        let Some(name) = env("OTEL_TRACES_SAMPLER") else {
            return Ok(Sampler::ParentBased(Root::AlwaysOn));
        };
        let ratio = || -> Result<f64> {
            let Some(arg) = env("OTEL_TRACES_SAMPLER_ARG") else {
                return Ok(1.0);
            };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(config(format!(
                    "OTEL_TRACES_SAMPLER_ARG `{}` is not a ratio between 0 and 1",
                    crate::text::for_log(&arg)
                ))),
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
            other => {
                return Err(config(format!(
                    "OTEL_TRACES_SAMPLER: unknown sampler `{}`: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                    crate::text::for_log(other)
                )));
            }
        })
    }

    /// Whether a span of `trace_id` is sampled, given its parent's `sampled` flag if it has a
    /// parent.
    pub(crate) fn sample(self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match (self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(r), _) => by_ratio(r, trace_id),
            (Sampler::ParentBased(_), Some(sampled)) => sampled,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::Ratio(r)), None) => by_ratio(r, trace_id),
        }
    }

    /// True when nothing is ever sampled: then no span is made at all.
    pub(crate) fn never(self) -> bool {
        matches!(self, Sampler::AlwaysOff | Sampler::Ratio(0.0))
    }

    /// The same sampler for the SDK.
    pub(crate) fn sdk(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler as Sdk;
        let root = |root: Root| match root {
            Root::AlwaysOn => Sdk::AlwaysOn,
            Root::AlwaysOff => Sdk::AlwaysOff,
            Root::Ratio(r) => Sdk::TraceIdRatioBased(r),
        };
        match self {
            Sampler::AlwaysOn => Sdk::AlwaysOn,
            Sampler::AlwaysOff => Sdk::AlwaysOff,
            Sampler::Ratio(r) => Sdk::TraceIdRatioBased(r),
            Sampler::ParentBased(r) => Sdk::ParentBased(Box::new(root(r))),
        }
    }
}

/// The SDK's rule: the trace id's low 64 bits, halved, below the ratio's share of 2^63.
fn by_ratio(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::env;

    #[test]
    fn read_from_the_environment() {
        let of = |vars: &[(&str, &str)]| Sampler::from_env(&env(vars));
        assert_eq!(of(&[]).unwrap(), Sampler::ParentBased(Root::AlwaysOn));
        assert_eq!(
            of(&[("OTEL_TRACES_SAMPLER", " always_off ")]).unwrap(),
            Sampler::AlwaysOff
        );
        assert_eq!(
            of(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ])
            .unwrap(),
            Sampler::Ratio(0.25)
        );
        assert_eq!(
            of(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]).unwrap(),
            Sampler::ParentBased(Root::Ratio(1.0))
        );
        let unknown = of(&[("OTEL_TRACES_SAMPLER", "jaeger\u{202e}")])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown sampler `jaeger\\u{202e}`"), "{unknown}");
        let bad = of(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert!(bad.unwrap_err().to_string().contains("not a ratio"));
    }

    #[test]
    fn decisions_follow_the_parent_then_the_root_sampler() {
        let id = [0xff; 16];
        let parent_based = Sampler::ParentBased(Root::AlwaysOff);
        assert!(parent_based.sample(&id, Some(true)));
        assert!(!parent_based.sample(&id, None));
        assert!(!Sampler::ParentBased(Root::AlwaysOn).sample(&id, Some(false)));
        assert!(Sampler::AlwaysOn.sample(&id, Some(false)));
        assert!(Sampler::AlwaysOff.never() && !Sampler::Ratio(0.5).never());
    }

    /// The ratio sampler agrees with the SDK's on every trace id tried.
    #[test]
    fn ratios_agree_with_the_sdk() {
        use opentelemetry::trace::{SpanKind, TraceId};
        use opentelemetry_sdk::trace::ShouldSample;
        for ratio in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let ours = Sampler::Ratio(ratio);
            let sdk = ours.sdk();
            for _ in 0..2000 {
                let id = super::super::record::trace_id();
                let theirs = sdk
                    .should_sample(None, TraceId::from_bytes(id), "x", &SpanKind::Server, &[], &[])
                    .decision;
                let sampled = theirs == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample;
                assert_eq!(ours.sample(&id, None), sampled, "ratio {ratio}");
            }
        }
    }
}
