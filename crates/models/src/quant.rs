//! GGML's tensor types: block layouts, decoding to `f32`, and encoding for the types Ember
//! writes (F32, F16, Q8_0).

use half::{bf16, f16};

/// A GGML tensor type that Ember reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale `d`, 32 signed bytes; `x = d · q`.
    Q8_0,
    /// Blocks of 32: an f16 scale `d`, 16 bytes of nibbles; `x = d · (q − 8)`.
    Q4_0,
    /// Blocks of 32: f16 `d` and `m`, 16 bytes of nibbles; `x = d · q + m`.
    Q4_1,
}

/// What Ember reads, for error messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are supported";

impl GgmlType {
    /// The type of a GGML type id, or `None` for one Ember does not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// GGML's id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Bf16 => 30,
        }
    }

    /// GGML's name of a type id, known or not (for messages).
    pub fn name_of(id: u32) -> String {
        let known = [
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (8, "Q8_0"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
            (15, "Q8_K"),
            (30, "BF16"),
        ];
        known
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("type {id}"), |(_, n)| (*n).to_string())
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q8_0 => 2 + 32,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
        }
    }

    /// Bytes that `values` values take, or `None` if they do not fill whole blocks.
    pub fn bytes_for(self, values: usize) -> Option<usize> {
        if !values.is_multiple_of(self.block_values()) {
            return None;
        }
        (values / self.block_values()).checked_mul(self.block_bytes())
    }

    /// Decodes `bytes` (whole blocks) into `f32`s.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let half_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Self::F16 => bytes.chunks_exact(2).map(|c| half_at(c, 0)).collect(),
            Self::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::Q8_0 => bytes
                .chunks_exact(self.block_bytes())
                .flat_map(|block| {
                    let d = half_at(block, 0);
                    block[2..].iter().map(move |&q| d * f32::from(q as i8))
                })
                .collect(),
            Self::Q4_0 | Self::Q4_1 => {
                let mut out = Vec::with_capacity(bytes.len() / self.block_bytes() * 32);
                for block in bytes.chunks_exact(self.block_bytes()) {
                    let d = half_at(block, 0);
                    let (m, nibbles) = if self == Self::Q4_1 {
                        (half_at(block, 2), &block[4..])
                    } else {
                        (-8.0 * d, &block[2..])
                    };
                    // The low nibbles are values 0..16 of the block, the high ones 16..32.
                    out.extend(nibbles.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                    out.extend(nibbles.iter().map(|&q| d * f32::from(q >> 4) + m));
                }
                out
            }
        }
    }

    /// Encodes `values` (whole blocks) in this type, as llama.cpp's reference quantisers do.
    /// Only F32, F16 and Q8_0 are written.
    ///
    /// # Panics
    /// For another type, or values that do not fill whole blocks; callers check both.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            Self::Q8_0 => {
                assert!(values.len().is_multiple_of(32), "Q8_0 needs whole blocks");
                let mut out = Vec::with_capacity(values.len() / 32 * 34);
                for block in values.chunks_exact(32) {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
                }
                out
            }
            other => panic!("Ember does not write {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_decodes_low_nibbles_then_high() {
        // d = 0.5, m = -1: byte 0x21 holds q = 1 (value 0) and q = 2 (value 16).
        let mut block = Vec::new();
        block.extend(f16::from_f32(0.5).to_le_bytes());
        block.extend(f16::from_f32(-1.0).to_le_bytes());
        block.push(0x21);
        block.extend([0u8; 15]);
        let values = GgmlType::Q4_1.decode(&block);
        assert_eq!(values.len(), 32);
        assert_eq!(values[0], -0.5);
        assert_eq!(values[16], 0.0);
        assert_eq!(values[1], -1.0);
    }

    #[test]
    fn q4_0_is_offset_by_eight() {
        let mut block = Vec::new();
        block.extend(f16::from_f32(2.0).to_le_bytes());
        block.push(0xf0);
        block.extend([0x88u8; 15]);
        let values = GgmlType::Q4_0.decode(&block);
        assert_eq!((values[0], values[16], values[1]), (-16.0, 14.0, 0.0));
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let values = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect::<Vec<_>>();
        let back = GgmlType::Q8_0.decode(&GgmlType::Q8_0.encode(&values));
        for block in 0..2 {
            let chunk = &values[block * 32..block * 32 + 32];
            let step = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for i in block * 32..block * 32 + 32 {
                // Half a step of rounding, plus the scale's own f16 rounding (2⁻¹¹ of up to 127 steps).
                assert!((back[i] - values[i]).abs() <= step * 0.57, "{i}");
            }
        }
    }
}
