//! Messages on the enrollment socket: a 4-byte big-endian length, then that many bytes of JSON.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::EnrollmentError;

/// The largest frame either side accepts; a request is a few hundred bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// Which pod a request is about, as the container runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `CNI_CONTAINERID` of the sandbox.
    pub container_id: String,
}

/// What the plugin asks of ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Serve this pod: its netns file descriptor travels with the message.
    Enroll {
        /// The pod.
        pod: PodRef,
        /// Its addresses, from the primary plugin's `prevResult`.
        ips: Vec<IpAddr>,
        /// The netns path the runtime gave (for logs and the durable state only).
        netns_path: String,
    },
    /// Stop serving this pod. Idempotent: unknown pods succeed.
    Unenroll {
        /// The pod.
        pod: PodRef,
    },
    /// Answer `Ok` only if this pod is enrolled with these addresses and being served.
    Check {
        /// The pod.
        pod: PodRef,
        /// The addresses it should be enrolled with.
        ips: Vec<IpAddr>,
    },
}

/// ztunnel's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Reply {
    /// Done.
    Ok,
    /// Not done, and why.
    Error {
        /// A message for the CNI error's `msg`.
        message: String,
    },
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, EnrollmentError> {
    let body = serde_json::to_vec(message)
        .map_err(|error| EnrollmentError::Malformed(error.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(EnrollmentError::Malformed(format!(
            "message of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
            body.len()
        )));
    }
    let length = u32::try_from(body.len())
        .map_err(|_| EnrollmentError::Malformed("frame too long".into()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes one complete frame (length prefix included).
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, EnrollmentError> {
    let (length, body) = frame.split_first_chunk::<4>().ok_or_else(|| {
        EnrollmentError::Malformed(format!(
            "frame of {} bytes has no length prefix",
            frame.len()
        ))
    })?;
    let length = u32::from_be_bytes(*length) as usize;
    if length != body.len() {
        return Err(EnrollmentError::Malformed(format!(
            "frame says {length} bytes but carries {}",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|error| EnrollmentError::Malformed(error.to_string()))
}

/// The body length a frame's 4-byte prefix announces, checked against [`MAX_FRAME`].
pub fn announced_length(prefix: [u8; 4]) -> Result<usize, EnrollmentError> {
    let length = u32::from_be_bytes(prefix) as usize;
    if length > MAX_FRAME {
        return Err(EnrollmentError::Malformed(format!(
            "frame announces {length} bytes, more than the {MAX_FRAME}-byte limit"
        )));
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            name: "sleep".into(),
            namespace: "default".into(),
            container_id: "c0ffee".into(),
        }
    }

    #[test]
    fn requests_round_trip() {
        let request = Request::Enroll {
            pod: pod(),
            ips: vec![
                "198.18.1.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            ],
            netns_path: "/run/netns/x".into(),
        };
        assert_eq!(
            decode::<Request>(&encode(&request).unwrap()).unwrap(),
            request
        );
        let reply = Reply::Error {
            message: "no".into(),
        };
        assert_eq!(decode::<Reply>(&encode(&reply).unwrap()).unwrap(), reply);
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(decode::<Request>(&[0, 0]).is_err(), "short prefix");
        assert!(
            decode::<Request>(&[0, 0, 0, 9, b'{', b'}']).is_err(),
            "length mismatch"
        );
        assert!(
            decode::<Request>(&[0, 0, 0, 2, b'{', b'}']).is_err(),
            "missing op"
        );
        let unknown = br#"{"op":"explode"}"#;
        let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(unknown);
        assert!(decode::<Request>(&frame).is_err(), "unknown op");
        assert!(announced_length((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
    }
}
