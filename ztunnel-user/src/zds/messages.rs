//! The ZDS messages, declared with `prost`'s derive macros: package `istio.workload.zds`, the
//! names, field numbers and types of Istio's `zds.proto`, so that the bytes on the socket are the
//! ones Istio's ztunnel and istio-cni exchange. No codegen step: ten small messages do not need
//! one, and a derive is not a hand-written codec.
//!
//! Ordering (see [`super`]): the proxy sends [`ZdsHello`]; the agent sends one [`AddWorkload`]
//! per enrolled pod (the netns fd rides along by `SCM_RIGHTS`), each answered by an [`Ack`], then
//! [`SnapshotSent`]; from then on adds and deletes as pods come and go.

/// The protocol version a proxy announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    /// Never sent: proto3's zero value.
    NotUsed = 0,
    /// The only version so far.
    V1 = 1,
}

/// First message on a connection, from the proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    /// The proxy's protocol version.
    #[prost(enumeration = "Version", tag = "1")]
    pub version: i32,
}

/// Who a pod is (Istio deprecated field 4, `trust_domain`; it is never sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadInfo {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kubernetes namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The pod's service account.
    #[prost(string, tag = "3")]
    pub service_account: String,
}

/// Serve this pod; its netns fd comes with the message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    /// The pod's UID.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// Who it is.
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

/// Keep serving this pod (a snapshot entry for a pod whose netns the agent could not send).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    /// The pod's UID.
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// Stop serving this pod.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    /// The pod's UID (field 2 in Istio's schema).
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// The snapshot is complete: pods the proxy serves that it did not name are gone.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

/// The answer to every request; an empty `error` means done.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Why the request failed; empty on success.
    #[prost(string, tag = "1")]
    pub error: String,
}

/// Agent to proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    /// Exactly one request.
    #[prost(oneof = "workload_request::Payload", tags = "1, 5, 2, 3")]
    pub payload: Option<workload_request::Payload>,
}

/// The request kinds.
pub mod workload_request {
    /// One request.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        /// Serve a pod.
        #[prost(message, tag = "1")]
        Add(super::AddWorkload),
        /// Keep serving a pod.
        #[prost(message, tag = "5")]
        Keep(super::KeepWorkload),
        /// Stop serving a pod.
        #[prost(message, tag = "2")]
        Del(super::DelWorkload),
        /// End of the snapshot.
        #[prost(message, tag = "3")]
        SnapshotSent(super::SnapshotSent),
    }
}

/// Proxy to agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    /// Exactly one answer.
    #[prost(oneof = "workload_response::Payload", tags = "1")]
    pub payload: Option<workload_response::Payload>,
}

/// The answer kinds.
pub mod workload_response {
    /// One answer.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        /// Done, or why not.
        #[prost(message, tag = "1")]
        Ack(super::Ack),
    }
}

impl WorkloadResponse {
    /// An acknowledgement: success when `error` is `None`.
    pub fn ack(error: Option<String>) -> Self {
        Self {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.unwrap_or_default(),
            })),
        }
    }

    /// The error the proxy reported, `Ok` for a plain ack; `Err(None)` for a response without
    /// an ack in it.
    pub fn outcome(&self) -> Result<(), Option<String>> {
        match &self.payload {
            Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(()),
            Some(workload_response::Payload::Ack(ack)) => Err(Some(ack.error.clone())),
            None => Err(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Bytes as protobuf lays them out for Istio's schema (tag = field << 3 | wire type).
    #[test]
    fn the_bytes_are_those_of_istios_schema() {
        assert_eq!(
            ZdsHello {
                version: Version::V1 as i32
            }
            .encode_to_vec(),
            [0x08, 0x01]
        );
        let delete = WorkloadRequest {
            payload: Some(workload_request::Payload::Del(DelWorkload {
                uid: "u".into(),
            })),
        };
        // field 2 (del), length 3: field 2 (uid), length 1, "u"
        assert_eq!(delete.encode_to_vec(), [0x12, 0x03, 0x12, 0x01, b'u']);
        let keep = WorkloadRequest {
            payload: Some(workload_request::Payload::Keep(KeepWorkload {
                uid: "u".into(),
            })),
        };
        assert_eq!(keep.encode_to_vec(), [0x2a, 0x03, 0x0a, 0x01, b'u']);
        let snapshot = WorkloadRequest {
            payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
        };
        assert_eq!(snapshot.encode_to_vec(), [0x1a, 0x00]);
        let add = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "u".into(),
                workload_info: Some(WorkloadInfo {
                    name: "n".into(),
                    namespace: "s".into(),
                    service_account: "a".into(),
                }),
            })),
        };
        assert_eq!(
            add.encode_to_vec(),
            [
                0x0a, 0x0e, 0x0a, 0x01, b'u', 0x12, 0x09, 0x0a, 0x01, b'n', 0x12, 0x01, b's', 0x1a,
                0x01, b'a'
            ]
        );
        assert_eq!(
            WorkloadResponse::ack(Some("e".into())).encode_to_vec(),
            [0x0a, 0x03, 0x0a, 0x01, b'e']
        );
    }

    #[test]
    fn an_ack_reads_back_as_its_outcome() {
        assert_eq!(WorkloadResponse::ack(None).outcome(), Ok(()));
        assert_eq!(
            WorkloadResponse::ack(Some("no netns".into())).outcome(),
            Err(Some("no netns".into()))
        );
        assert_eq!(WorkloadResponse { payload: None }.outcome(), Err(None));
    }
}
