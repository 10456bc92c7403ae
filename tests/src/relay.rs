//! Reference relays for the benchmarks: what a proxy on each end costs on this machine without
//! HBONE's protocol work.
//!
//! - **plain**: client → relay → relay → server, each relay a TCP copy with a 256 KiB buffer.
//!   These are the three TCP hops that any design with a proxy on each end pays.
//! - **seal / open**: the same two relays; the first seals the client's bytes in 16 KiB records
//!   with AES-256-GCM (ring, the AEAD rustls negotiates for HBONE), the second opens them. This
//!   adds the cipher but no TLS library, no HTTP/2 and no buffering beyond each relay's own.
//!
//! HBONE pays all of this plus TLS records and HTTP/2 framing, so a seal/open pair bounds what
//! HBONE can reach on the same hops. The records are not a protocol: a 4-byte length, the
//! ciphertext, the tag, and a counter as nonce, under a key fixed in this file (both relays of
//! a pair may run in different processes). Only the client→server direction is sealed; the way
//! back is copied as it is.

use std::{
    io::IoSliceMut,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, bail};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// Plaintext per record (TLS's maximum).
const RECORD: usize = 16 * 1024;
/// Length prefix and AES-GCM tag around each record.
const HEADER: usize = 4;
const TAG: usize = 16;
/// Records sealed per read: one `readv` fills up to this many.
const BATCH: usize = 16;
/// Plain relays' buffer per direction.
const COPY_BUFFER: usize = 256 * 1024;

/// Entry points of the two reference paths to one server, each a pair of relays.
pub struct Pairs {
    /// Two plain relays.
    pub plain: SocketAddr,
    /// A sealing relay, then an opening one.
    pub sealed: SocketAddr,
}

/// Starts both pairs in this process: first relays on `near`, second relays on `far`, both
/// ending at `server`.
pub async fn start_pairs(near: IpAddr, far: IpAddr, server: SocketAddr) -> anyhow::Result<Pairs> {
    let mut entries = Vec::new();
    for (first, second) in [(Role::Plain, Role::Plain), (Role::Seal, Role::Open)] {
        let far_listener = TcpListener::bind((far, 0)).await?;
        let near_listener = TcpListener::bind((near, 0)).await?;
        entries.push(near_listener.local_addr()?);
        tokio::spawn(serve(near_listener, far_listener.local_addr()?, first));
        tokio::spawn(serve(far_listener, server, second));
    }
    Ok(Pairs {
        plain: entries[0],
        sealed: entries[1],
    })
}

/// What one relay does to the client's bytes on their way on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Copies them.
    Plain,
    /// Seals them into records.
    Seal,
    /// Opens the records a sealing relay made.
    Open,
}

impl std::str::FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "plain" => Ok(Role::Plain),
            "seal" => Ok(Role::Seal),
            "open" => Ok(Role::Open),
            other => bail!("relay role {other:?} (expected plain, seal or open)"),
        }
    }
}

/// Relays every connection accepted on `listener` to `onward` until the listener fails.
pub async fn serve(listener: TcpListener, onward: SocketAddr, role: Role) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Err(error) = relay(client, onward, role).await {
                eprintln!("reference relay ({role:?}) to {onward}: {error:#}");
            }
        });
    }
}

async fn relay(mut client: TcpStream, onward: SocketAddr, role: Role) -> anyhow::Result<()> {
    let mut upstream = TcpStream::connect(onward).await?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    if let Role::Plain = role {
        tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await?;
        return Ok(());
    }
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let forward = async {
        match role {
            Role::Seal => seal(client_read, upstream_write).await,
            Role::Open | Role::Plain => open(client_read, upstream_write).await,
        }
    };
    let backward = copy_back(upstream_read, client_write);
    tokio::try_join!(forward, backward)?;
    Ok(())
}

/// The key of every pair. A fixed key keeps two relays in different processes in step, and
/// costs AES-GCM exactly what a negotiated one does. Nothing secret ever goes through a relay.
const KEY: [u8; 32] = [0x5a; 32];

fn cipher() -> anyhow::Result<LessSafeKey> {
    let key = UnboundKey::new(&AES_256_GCM, &KEY)
        .map_err(|_| anyhow::anyhow!("AES-256-GCM rejected the key"))?;
    Ok(LessSafeKey::new(key))
}

fn nonce(counter: &mut u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    *counter += 1;
    Nonce::assume_unique_for_key(bytes)
}

/// Reads plaintext straight into the payload slots of up to `BATCH` records, seals them in
/// place and writes the batch with one call: one user-space copy per byte (the read).
async fn seal(from: OwnedReadHalf, mut to: OwnedWriteHalf) -> anyhow::Result<()> {
    let key = cipher()?;
    let slot = HEADER + RECORD + TAG;
    let mut batch = vec![0u8; BATCH * slot];
    let mut counter = 0u64;
    loop {
        from.readable().await?;
        let read = {
            let mut slices: Vec<IoSliceMut> = batch
                .chunks_mut(slot)
                .map(|record| IoSliceMut::new(&mut record[HEADER..HEADER + RECORD]))
                .collect();
            match from.try_read_vectored(&mut slices) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error.into()),
            }
        };
        if read == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let mut end = 0;
        for (index, record) in batch.chunks_mut(slot).enumerate() {
            let length = read.saturating_sub(index * RECORD).min(RECORD);
            if length == 0 {
                break;
            }
            let (header, rest) = record.split_at_mut(HEADER);
            let (payload, tail) = rest.split_at_mut(length);
            let tag = key
                .seal_in_place_separate_tag(nonce(&mut counter), Aad::empty(), payload)
                .map_err(|_| anyhow::anyhow!("seal failed"))?;
            tail[..TAG].copy_from_slice(tag.as_ref());
            header.copy_from_slice(&(length as u32).to_be_bytes());
            end = index * slot + HEADER + length + TAG;
        }
        // Only the last record can be short, so the batch up to `end` is contiguous.
        to.write_all(&batch[..end]).await?;
    }
}

/// Reads records into one buffer, opens each in place and writes the plaintext on: the read,
/// plus one move of the plaintext to the front of the buffer (as a TLS library's copy out).
async fn open(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> anyhow::Result<()> {
    let key = cipher()?;
    let mut buffer = vec![0u8; BATCH * (HEADER + RECORD + TAG)];
    let mut filled = 0;
    let mut counter = 0u64;
    loop {
        let read = from.read(&mut buffer[filled..]).await?;
        if read == 0 {
            if filled != 0 {
                bail!("stream ended inside a record");
            }
            to.shutdown().await?;
            return Ok(());
        }
        filled += read;
        let (mut parsed, mut plaintext) = (0, 0);
        while filled - parsed >= HEADER {
            let header: [u8; HEADER] = buffer[parsed..parsed + HEADER]
                .try_into()
                .context("record header")?;
            let length = u32::from_be_bytes(header) as usize;
            if length > RECORD {
                bail!("record of {length} bytes");
            }
            let record_end = parsed + HEADER + length + TAG;
            if record_end > filled {
                break;
            }
            key.open_in_place(
                nonce(&mut counter),
                Aad::empty(),
                &mut buffer[parsed + HEADER..record_end],
            )
            .map_err(|_| anyhow::anyhow!("record failed to open"))?;
            buffer.copy_within(parsed + HEADER..parsed + HEADER + length, plaintext);
            plaintext += length;
            parsed = record_end;
        }
        to.write_all(&buffer[..plaintext]).await?;
        buffer.copy_within(parsed..filled, 0);
        filled -= parsed;
    }
}

async fn copy_back(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> anyhow::Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// FNV-1a over a byte stream: any lost, repeated or reordered byte changes it.
    fn fold(mut hash: u64, bytes: &[u8]) -> u64 {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
        hash
    }
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

    /// Reads everything, then answers with the hash of what arrived.
    async fn hashing_server(listener: TcpListener) -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept().await?;
        let mut hash = FNV_OFFSET;
        let mut buffer = vec![0u8; 100_000];
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            hash = fold(hash, &buffer[..read]);
        }
        stream.write_all(&hash.to_be_bytes()).await?;
        stream.shutdown().await?;
        Ok(())
    }

    /// Sends `total` patterned bytes in writes of varying sizes (records end up full, short
    /// and split across reads) and returns (what was sent, what the server hashed).
    async fn send_through(entry: SocketAddr, total: usize) -> anyhow::Result<(u64, u64)> {
        let mut stream = TcpStream::connect(entry).await?;
        let pattern: Vec<u8> = (0..total).map(|index| (index * 31 % 251) as u8).collect();
        let mut sent = FNV_OFFSET;
        let mut offset = 0;
        for size in [1usize, 7, 16_384, 16_385, 100_000, 3, 65_536]
            .iter()
            .cycle()
        {
            if offset == total {
                break;
            }
            let end = (offset + size).min(total);
            stream.write_all(&pattern[offset..end]).await?;
            sent = fold(sent, &pattern[offset..end]);
            offset = end;
        }
        stream.shutdown().await?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).await?;
        Ok((sent, u64::from_be_bytes(answer)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_pairs_deliver_every_byte_in_order_and_carry_the_answer_back() -> anyhow::Result<()>
    {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for sealed in [false, true] {
            let server = TcpListener::bind((loopback, 0)).await?;
            let server_address = server.local_addr()?;
            let serving = tokio::spawn(hashing_server(server));
            let pairs = start_pairs(loopback, loopback, server_address).await?;
            let entry = if sealed { pairs.sealed } else { pairs.plain };
            let (sent, received) = send_through(entry, 3 * 1024 * 1024 + 5).await?;
            assert_eq!(
                sent, received,
                "sealed={sealed}: the bytes differ at the server"
            );
            serving.await??;
        }
        Ok(())
    }

    #[test]
    fn roles_parse_and_unknown_ones_are_named() {
        assert_eq!("seal".parse::<Role>().ok(), Some(Role::Seal));
        assert_eq!("open".parse::<Role>().ok(), Some(Role::Open));
        assert_eq!("plain".parse::<Role>().ok(), Some(Role::Plain));
        let error = "tls".parse::<Role>().err().map(|error| error.to_string());
        assert!(error.is_some_and(|text| text.contains("\"tls\"")));
    }
}
