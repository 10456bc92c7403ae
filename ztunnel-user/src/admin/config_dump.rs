//! `/config_dump`: what this proxy believes, as JSON — workloads, services, policies, the
//! result of the last configuration reload, and certificates with their expiry (never keys).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    authz::Policy,
    config::ReloadOutcome,
    state::{Service, State, Workload},
    xds::XdsStatus,
};

/// Public facts about one certificate; no key material ever goes here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDetails {
    /// Serial number, hex.
    pub serial_number: String,
    /// The URI SANs, e.g. the SPIFFE id.
    pub subject_alt_names: Vec<String>,
    /// Start of validity (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub valid_from: SystemTime,
    /// End of validity (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub expiration_time: SystemTime,
}

/// The certificate the proxy holds for one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    /// The SPIFFE id the certificate is for.
    pub identity: String,
    /// `Available`, `Pending` or an error text.
    pub state: String,
    /// Leaf first.
    pub cert_chain: Vec<CertificateDetails>,
    /// The trust bundle.
    pub root_certs: Vec<CertificateDetails>,
}

/// Gives the admin server the certificates the identity module holds.
pub trait CertificateInfo: Send + Sync {
    /// One summary per identity, in any order.
    fn certificates(&self) -> Vec<CertificateSummary>;
}

impl<F> CertificateInfo for F
where
    F: Fn() -> Vec<CertificateSummary> + Send + Sync,
{
    fn certificates(&self) -> Vec<CertificateSummary> {
        self()
    }
}

/// A source with no certificates (before identity is wired in, and in tests).
pub fn no_certificates() -> Arc<dyn CertificateInfo> {
    Arc::new(Vec::new)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    workloads: Vec<&'a Workload>,
    services: Vec<&'a Service>,
    policies: Vec<&'a Policy>,
    certificates: Vec<CertificateSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload: Option<LastReload>,
    /// The xDS stream (last version and nonce per type, last NACK), when istiod is the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    xds: Option<&'a XdsStatus>,
}

#[derive(Serialize)]
struct LastReload {
    attempt: u64,
    applied: bool,
    message: String,
}

/// The JSON document for `state`.
pub fn render(
    state: &State,
    certificates: &dyn CertificateInfo,
    last_reload: Option<&ReloadOutcome>,
    xds: Option<&XdsStatus>,
) -> Result<String, serde_json::Error> {
    let dump = ConfigDump {
        workloads: state.workloads().map(Arc::as_ref).collect(),
        services: state.services().map(Arc::as_ref).collect(),
        policies: state.policies().map(Arc::as_ref).collect(),
        certificates: certificates.certificates(),
        last_reload: last_reload.map(|outcome| LastReload {
            attempt: outcome.attempt,
            applied: outcome.result.is_ok(),
            message: match &outcome.result {
                Ok(summary) => summary.clone(),
                Err(error) => error.clone(),
            },
        }),
        xds,
    };
    serde_json::to_string_pretty(&dump)
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_rfc3339(*time))
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC; times before 1970 print as the epoch.
pub fn format_rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(format_rfc3339(leap_day), "2000-02-29T01:01:01Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(format_rfc3339(later), "2026-12-31T23:59:59Z");
    }
}
