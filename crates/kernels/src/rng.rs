//! Random streams for masks, derived from stable names instead of a global generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random stream of one mask: a ChaCha8 generator seeded from `(seed, tensor name, model
/// index)` through a fixed hash, so the same merge draws the same mask on any machine, in any
/// thread order, on any device.
#[derive(Debug, Clone)]
pub struct MaskRng {
    rng: ChaCha8Rng,
}

/// FNV-1a over bytes: stable across platforms and Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser, to spread the hash over all bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MaskRng {
    /// The stream for `tensor` of input model `model` in a merge seeded with `seed`.
    pub fn new(seed: u64, tensor: &str, model: usize) -> MaskRng {
        let mut h = fnv1a(&seed.to_le_bytes(), 0xcbf2_9ce4_8422_2325);
        h = fnv1a(tensor.as_bytes(), h);
        h = fnv1a(&(model as u64).to_le_bytes(), h);
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(h.wrapping_add(i as u64)).to_le_bytes());
        }
        MaskRng {
            rng: ChaCha8Rng::from_seed(key),
        }
    }

    /// `n` draws uniform in `[0, 1)`.
    pub fn uniform(&mut self, n: usize) -> Vec<f32> {
        // 24 random bits give every representable multiple of 2^-24 in [0, 1) exactly.
        (0..n)
            .map(|_| (self.rng.random::<u32>() >> 8) as f32 * (1.0 / (1u32 << 24) as f32))
            .collect()
    }

    /// Draws `start..start + out.len()` of the stream [`MaskRng::uniform`] reads from the
    /// start (the same values, for a chunk of a tensor; this generator itself is not moved).
    pub fn uniform_at(&self, start: u64, out: &mut [f32]) {
        let mut rng = self.rng.clone();
        rng.set_word_pos(start as u128);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && out.len() >= 2 * WIDE_WORDS {
            // up to a block boundary, then 16 blocks an instruction, then the rest
            let head = ((16 - start % 16) % 16) as usize;
            let (first, rest) = out.split_at_mut(head);
            let wide = rest.len() / WIDE_WORDS * WIDE_WORDS;
            let (middle, tail) = rest.split_at_mut(wide);
            Self::words_to_uniform(&mut rng, first);
            let key = key_words(&self.rng.get_seed());
            // SAFETY: the CPU has the feature the function is compiled for
            unsafe { chacha8_uniform_avx512(&key, (start + head as u64) / 16, middle) };
            rng.set_word_pos((start + (head + wide) as u64) as u128);
            Self::words_to_uniform(&mut rng, tail);
            return;
        }
        Self::words_to_uniform(&mut rng, out);
    }

    /// The next `out.len()` words of `rng` as draws in `[0, 1)`.
    fn words_to_uniform(rng: &mut ChaCha8Rng, out: &mut [f32]) {
        // the words in bulk (the same stream as one `random::<u32>()` after the other, which
        // `uniform` reads; the tests check it), turned into floats in place
        let words: &mut [u32] = bytemuck::cast_slice_mut(out);
        rng.fill(words);
        for w in words.iter_mut() {
            *w = ((*w >> 8) as f32 * (1.0 / (1u32 << 24) as f32)).to_bits();
        }
    }
}

/// Words of the stream one AVX-512 pass makes: 16 ChaCha blocks of 16 words.
#[cfg(target_arch = "x86_64")]
const WIDE_WORDS: usize = 256;

/// The key of a 32-byte seed as ChaCha's eight little-endian words.
#[cfg(target_arch = "x86_64")]
fn key_words(seed: &[u8; 32]) -> [u32; 8] {
    let mut key = [0u32; 8];
    for (k, b) in key.iter_mut().zip(seed.chunks_exact(4)) {
        *k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    key
}

/// The draws of blocks `block..` of the ChaCha8 stream of `key` (stream 0; `rand_chacha`'s
/// layout: the 64-bit block counter in words 12-13, the stream in 14-15) into `out` (a whole
/// number of 16-block groups), as [`MaskRng::uniform`] turns words into draws: 16 blocks at a
/// time, block `l` of a group in lane `l` of each state word, transposed back into stream
/// order before the conversion. The same integer operations as the scalar cipher, so the same
/// bits (tested against `rand_chacha`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chacha8_uniform_avx512(key: &[u32; 8], block: u64, out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(out.len().is_multiple_of(WIDE_WORDS));
    let set = |w: u32| _mm512_set1_epi32(w as i32);
    let consts = [0x6170_7865u32, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let scale = _mm512_set1_ps(1.0 / (1u32 << 24) as f32);
    macro_rules! qr {
        ($v:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
            $v[$a] = _mm512_add_epi32($v[$a], $v[$b]);
            $v[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($v[$d], $v[$a]));
            $v[$c] = _mm512_add_epi32($v[$c], $v[$d]);
            $v[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($v[$b], $v[$c]));
            $v[$a] = _mm512_add_epi32($v[$a], $v[$b]);
            $v[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($v[$d], $v[$a]));
            $v[$c] = _mm512_add_epi32($v[$c], $v[$d]);
            $v[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($v[$b], $v[$c]));
        };
    }
    for (g, group) in out.chunks_exact_mut(WIDE_WORDS).enumerate() {
        let first = block.wrapping_add(16 * g as u64);
        // the 64-bit counters of the 16 blocks: low words, and high words with the carry of
        // lanes whose low word wrapped
        let low = _mm512_add_epi32(set(first as u32), lanes);
        let wrapped = _mm512_cmplt_epu32_mask(low, set(first as u32));
        let high = _mm512_mask_add_epi32(
            set((first >> 32) as u32),
            wrapped,
            set((first >> 32) as u32),
            set(1),
        );
        let init = [
            set(consts[0]),
            set(consts[1]),
            set(consts[2]),
            set(consts[3]),
            set(key[0]),
            set(key[1]),
            set(key[2]),
            set(key[3]),
            set(key[4]),
            set(key[5]),
            set(key[6]),
            set(key[7]),
            low,
            high,
            set(0),
            set(0),
        ];
        let mut v = init;
        for _ in 0..4 {
            qr!(v, 0, 4, 8, 12);
            qr!(v, 1, 5, 9, 13);
            qr!(v, 2, 6, 10, 14);
            qr!(v, 3, 7, 11, 15);
            qr!(v, 0, 5, 10, 15);
            qr!(v, 1, 6, 11, 12);
            qr!(v, 2, 7, 8, 13);
            qr!(v, 3, 4, 9, 14);
        }
        for (x, i) in v.iter_mut().zip(init) {
            *x = _mm512_add_epi32(*x, i);
        }
        // v[w] lane l = word w of block l: transpose so that row l is block l
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
            u[4 * q] = _mm512_unpacklo_epi64(a, c);
            u[4 * q + 1] = _mm512_unpackhi_epi64(a, c);
            u[4 * q + 2] = _mm512_unpacklo_epi64(b, d);
            u[4 * q + 3] = _mm512_unpackhi_epi64(b, d);
        }
        let mut w = [_mm512_setzero_si512(); 16];
        for h in 0..2 {
            for j in 0..4 {
                let (a, b) = (u[8 * h + j], u[8 * h + 4 + j]);
                w[8 * h + j] = _mm512_shuffle_i32x4::<0x88>(a, b);
                w[8 * h + 4 + j] = _mm512_shuffle_i32x4::<0xdd>(a, b);
            }
        }
        for j in 0..8 {
            let (a, b) = (w[j], w[8 + j]);
            let rows = [
                (j, _mm512_shuffle_i32x4::<0x88>(a, b)),
                (j + 8, _mm512_shuffle_i32x4::<0xdd>(a, b)),
            ];
            for (l, row) in rows {
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(row)), scale);
                // SAFETY: block l's 16 draws are group[16 l..16 l + 16], inside the group
                unsafe { _mm512_storeu_ps(group.as_mut_ptr().add(16 * l), f) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_stable_and_distinct() {
        let a = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let b = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let c = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 2).uniform(4);
        let d = MaskRng::new(8, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let e = MaskRng::new(7, "model.layers.1.mlp.up_proj.weight", 1).uniform(4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
        assert!(a.iter().all(|u| (0.0..1.0).contains(u)));
    }

    #[test]
    fn uniform_at_reads_the_same_stream() {
        let all = MaskRng::new(3, "x", 1).uniform(1000);
        let r = MaskRng::new(3, "x", 1);
        let mut part = vec![0.0; 300];
        r.uniform_at(517, &mut part);
        assert_eq!(part, all[517..817]);
        r.uniform_at(0, &mut part[..10]);
        assert_eq!(part[..10], all[..10]);
        for (start, len) in [(1, 1), (15, 33), (64, 200), (999, 1)] {
            r.uniform_at(start as u64, &mut part[..len]);
            assert_eq!(part[..len], all[start..start + len], "{start}..+{len}");
        }
    }

    /// The AVX-512 path (16 blocks at a time, used for 512 draws and more) gives the stream
    /// `rand_chacha` gives, whatever the start and length, and across a 32-bit counter carry.
    #[test]
    fn wide_draws_are_the_scalar_stream() {
        let r = MaskRng::new(9, "model.embed_tokens.weight", 2);
        let all = r.clone().uniform(20_000);
        for (start, len) in [
            (0, 512),
            (0, 20_000),
            (5, 4000),
            (16, 777),
            (4097, 9000),
            (255, 1000),
        ] {
            let mut got = vec![0.0; len];
            r.uniform_at(start as u64, &mut got);
            assert_eq!(got, all[start..start + len], "{start}..+{len}");
        }
        // blocks 2^32 - 5 ..: the counter's low word wraps inside a group
        let at = ((1u64 << 32) - 5) * 16 + 3;
        let mut scalar = r.rng.clone();
        scalar.set_word_pos(at as u128);
        let mut want = vec![0.0; 600];
        MaskRng::words_to_uniform(&mut scalar, &mut want);
        let mut got = vec![0.0; 600];
        r.uniform_at(at, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn uniform_mean_is_half() {
        let u = MaskRng::new(1, "x", 0).uniform(100_000);
        let mean = u.iter().map(|v| *v as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
