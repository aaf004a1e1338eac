//! The byte layout of one object file: a 16-byte header, then one zstd frame.
//!
//! ```text
//! 0..4   magic "BDC1"
//! 4      kind (see Kind)
//! 5      filter: 0 none, 1 byte shuffle
//! 6      element size of the shuffle (1..=8)
//! 7      reserved, 0
//! 8..16  raw length, u64 little-endian
//! ```

use anyhow::{bail, ensure, Result};

pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"BDC1";

/// What an object holds; informational (the key does not depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Pixel data of one patch.
    Tile = 1,
    /// A segmentation mask.
    Mask = 2,
    /// A dense numeric matrix (embeddings, uncertainty maps).
    Matrix = 3,
    /// A model checkpoint (safetensors).
    Checkpoint = 4,
    /// A JSON document.
    Json = 5,
    /// Anything else.
    Blob = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Kind> {
        Ok(match b {
            1 => Kind::Tile,
            2 => Kind::Mask,
            3 => Kind::Matrix,
            4 => Kind::Checkpoint,
            5 => Kind::Json,
            6 => Kind::Blob,
            _ => bail!("unknown object kind {b}"),
        })
    }
}

/// A reversible transform applied before compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    /// Byte shuffle with this element size: all first bytes, then all second bytes, … (as Blosc
    /// does), so the slowly varying high bytes of 16-bit pixels compress well.
    Shuffle(u8),
}

/// The parsed header of an object file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub filter: Filter,
    pub raw_len: u64,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        ensure!(bytes.len() >= HEADER_LEN, "shorter than its header");
        ensure!(&bytes[..4] == MAGIC, "bad magic");
        let kind = Kind::from_u8(bytes[4])?;
        let filter = match (bytes[5], bytes[6]) {
            (0, 0) => Filter::None,
            (1, n @ 1..=8) => Filter::Shuffle(n),
            (f, n) => bail!("unknown filter {f}/{n}"),
        };
        ensure!(bytes[7] == 0, "bad reserved byte");
        let raw_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        Ok(Header {
            kind,
            filter,
            raw_len,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(self.kind as u8);
        match self.filter {
            Filter::None => out.extend_from_slice(&[0, 0]),
            Filter::Shuffle(n) => out.extend_from_slice(&[1, n]),
        }
        out.push(0);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }
}

/// Encodes `raw` as an object file's bytes.
pub fn encode(kind: Kind, filter: Filter, raw: &[u8], level: i32) -> Result<Vec<u8>> {
    let filter = match filter {
        Filter::Shuffle(n) if n > 1 && raw.len().is_multiple_of(n as usize) => filter,
        _ => Filter::None,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + raw.len() / 2);
    Header {
        kind,
        filter,
        raw_len: raw.len() as u64,
    }
    .write(&mut out);
    let compressed = match filter {
        Filter::None => zstd::bulk::compress(raw, level)?,
        Filter::Shuffle(n) => zstd::bulk::compress(&shuffle(raw, n as usize), level)?,
    };
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Decodes an object file's bytes into its header and raw content.
pub fn decode(bytes: &[u8]) -> Result<(Header, Vec<u8>)> {
    ensure!(!bytes.is_empty(), "truncated: the file is empty");
    ensure!(
        bytes.len() >= HEADER_LEN,
        "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
        bytes.len()
    );
    let header = Header::parse(bytes)?;
    let frame = &bytes[HEADER_LEN..];
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Err(_) => bail!(
            "truncated or damaged: the {} bytes after the header are not one whole zstd frame",
            frame.len()
        ),
        Ok(n) if n < frame.len() => bail!(
            "damaged: {} unexpected bytes after the zstd frame",
            frame.len() - n
        ),
        Ok(_) => {}
    }
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten();
    ensure!(
        declared == Some(header.raw_len),
        "header says {} bytes, zstd frame says {declared:?}",
        header.raw_len
    );
    let mut data = Vec::new();
    data.try_reserve_exact(header.raw_len as usize)
        .map_err(|_| anyhow::anyhow!("cannot allocate {} bytes", header.raw_len))?;
    // One decompression context per thread: making one per object was 4–7 % of a clone.
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with(|d| -> Result<()> {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(frame, &mut data)
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
        Ok(())
    })?;
    ensure!(
        data.len() as u64 == header.raw_len,
        "decompressed to {} bytes, header says {}",
        data.len(),
        header.raw_len
    );
    let raw = match header.filter {
        Filter::None => data,
        Filter::Shuffle(n) => unshuffle(&data, n as usize),
    };
    Ok((header, raw))
}

fn shuffle(raw: &[u8], n: usize) -> Vec<u8> {
    let count = raw.len() / n;
    let mut out = vec![0u8; raw.len()];
    if n == 2 {
        // 16-bit pixels, nearly every tile: a loop the compiler vectorises.
        let (lo, hi) = out.split_at_mut(count);
        for ((pair, l), h) in raw.chunks_exact(2).zip(lo).zip(hi) {
            (*l, *h) = (pair[0], pair[1]);
        }
        return out;
    }
    for (i, elem) in raw.chunks_exact(n).enumerate() {
        for (b, &byte) in elem.iter().enumerate() {
            out[b * count + i] = byte;
        }
    }
    out
}

fn unshuffle(data: &[u8], n: usize) -> Vec<u8> {
    let count = data.len() / n;
    let mut out = vec![0u8; data.len()];
    if n == 2 {
        let (lo, hi) = data.split_at(count);
        for ((pair, l), h) in out.chunks_exact_mut(2).zip(lo).zip(hi) {
            pair.copy_from_slice(&[*l, *h]);
        }
        return out;
    }
    for (i, elem) in out.chunks_exact_mut(n).enumerate() {
        for (b, byte) in elem.iter_mut().enumerate() {
            *byte = data[b * count + i];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_round_trips() {
        let raw: Vec<u8> = (0..=255u8).cycle().take(4 * 99).collect();
        for n in [2, 4] {
            // Byte b of element i goes to b × count + i (the stored layout; the 2-byte case has
            // its own loop).
            let count = raw.len() / n;
            let shuffled = shuffle(&raw, n);
            for (i, elem) in raw.chunks_exact(n).enumerate() {
                for (b, &byte) in elem.iter().enumerate() {
                    assert_eq!(shuffled[b * count + i], byte);
                }
            }
            assert_eq!(unshuffle(&shuffled, n), raw);
            let enc = encode(Kind::Tile, Filter::Shuffle(n as u8), &raw, 1).unwrap();
            assert_eq!(decode(&enc).unwrap().1, raw);
        }
    }

    #[test]
    fn truncation_is_called_truncation() {
        let raw: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let enc = encode(Kind::Blob, Filter::None, &raw, 1).unwrap();
        for cut in [
            0,
            5,
            HEADER_LEN,
            HEADER_LEN + 3,
            enc.len() / 2,
            enc.len() - 1,
        ] {
            let e = format!("{:#}", decode(&enc[..cut]).unwrap_err());
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn odd_length_falls_back_to_no_filter() {
        let enc = encode(Kind::Blob, Filter::Shuffle(2), b"abc", 1).unwrap();
        let (h, raw) = decode(&enc).unwrap();
        assert_eq!((h.filter, raw.as_slice()), (Filter::None, &b"abc"[..]));
    }
}
