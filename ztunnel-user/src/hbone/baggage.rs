//! The W3C `baggage` header Istio's ztunnel puts on HBONE `CONNECT` requests (the source
//! workload) and `200` answers (the destination workload), with OpenTelemetry's keys:
//! `k8s.cluster.name`, `k8s.namespace.name`, `k8s.<workload type>.name`, `service.name`,
//! `service.version`, `cloud.region`, `cloud.availability_zone`. A receiver that cannot look
//! the peer up (e.g. it came through a gateway) labels its metrics from it.

/// The header's name.
pub const HEADER: &str = "baggage";

/// The workload keys a receiver accepts (`k8s.<type>.name`), as Istio's ztunnel does.
const WORKLOAD_KEYS: &[&str] = &[
    "k8s.deployment.name",
    "k8s.cronjob.name",
    "k8s.pod.name",
    "k8s.job.name",
];

/// What one side says about itself; every field may be missing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Baggage {
    /// The cluster.
    pub cluster_id: Option<String>,
    /// The namespace.
    pub namespace: Option<String>,
    /// The owning workload (e.g. the Deployment).
    pub workload_name: Option<String>,
    /// The canonical service.
    pub service_name: Option<String>,
    /// The canonical revision.
    pub revision: Option<String>,
    /// The cloud region.
    pub region: Option<String>,
    /// The availability zone.
    pub zone: Option<String>,
}

impl Baggage {
    /// The header value; `workload_type` names the workload key (`deployment` when empty).
    pub fn header_value(&self, workload_type: &str) -> String {
        let workload_type = if workload_type.is_empty() {
            "deployment"
        } else {
            workload_type
        };
        let workload_key = format!("k8s.{workload_type}.name");
        [
            ("k8s.cluster.name", &self.cluster_id),
            ("k8s.namespace.name", &self.namespace),
            (workload_key.as_str(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.revision),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| format!("{key}={value}")))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// Reads every `baggage` header value (members may be spread over several); unknown keys
    /// and members without `=` are ignored, an empty value is no value.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut baggage = Self::default();
        for member in values.into_iter().flat_map(|value| value.split(',')) {
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            // W3C members may carry `;property` suffixes after the value.
            let value = value.split(';').next().unwrap_or_default().trim();
            let value = (!value.is_empty()).then(|| value.to_owned());
            match key.trim() {
                "k8s.cluster.name" => baggage.cluster_id = value,
                "k8s.namespace.name" => baggage.namespace = value,
                key if WORKLOAD_KEYS.contains(&key) => baggage.workload_name = value,
                "service.name" => baggage.service_name = value,
                "service.version" => baggage.revision = value,
                "cloud.region" => baggage.region = value,
                "cloud.availability_zone" => baggage.zone = value,
                _ => {}
            }
        }
        baggage
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Baggage {
        Baggage {
            cluster_id: Some("K1".into()),
            namespace: Some("NS1".into()),
            workload_name: Some("N1".into()),
            service_name: Some("N2".into()),
            revision: Some("V1".into()),
            region: Some("R1".into()),
            zone: Some("Z1".into()),
        }
    }

    #[test]
    fn writes_istios_keys_in_istios_order() {
        assert_eq!(
            full().header_value("deployment"),
            "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,\
             service.version=V1,cloud.region=R1,cloud.availability_zone=Z1"
        );
        let partial = Baggage {
            namespace: Some("NS1".into()),
            workload_name: Some("job-7".into()),
            ..Baggage::default()
        };
        assert_eq!(
            partial.header_value("job"),
            "k8s.namespace.name=NS1,k8s.job.name=job-7"
        );
        assert_eq!(Baggage::default().header_value(""), "");
    }

    #[test]
    fn reads_back_what_it_writes_and_istios_other_workload_keys() {
        assert_eq!(Baggage::parse([full().header_value("").as_str()]), full());
        for key in WORKLOAD_KEYS {
            let parsed = Baggage::parse([format!("{key}=w").as_str()]);
            assert_eq!(parsed.workload_name.as_deref(), Some("w"), "{key}");
        }
    }

    #[test]
    fn empty_values_unknown_keys_and_several_headers() {
        let parsed = Baggage::parse([
            "k8s.cluster.name=,k8s.namespace.name=NS1;prop=1",
            "service.name=N2,other=x,garbage",
        ]);
        assert_eq!(
            parsed,
            Baggage {
                namespace: Some("NS1".into()),
                service_name: Some("N2".into()),
                ..Baggage::default()
            }
        );
        assert!(Baggage::parse(["nothing-here"]).is_empty());
    }
}
