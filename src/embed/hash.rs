//! Lexical feature-hashing embedder.

use super::{EmbedError, Embedder, l2_normalize};

/// Weight of a word bigram relative to a unigram.
const BIGRAM_WEIGHT: f32 = 0.5;

/// **Lexical, not semantic**: a deterministic, dependency-free bag-of-words embedding.
///
/// The text is lower-cased and split into words (runs of alphanumeric characters); every word
/// unigram (weight 1) and adjacent-word bigram (weight 0.5) is hashed (64-bit FNV-1a + a
/// SplitMix64 finaliser) to one of `dims` buckets, with a second hash bit choosing the sign
/// ("signed feature hashing", which keeps collisions unbiased); the vector is L2-normalised.
///
/// Cosine similarity therefore measures *shared words*: "pod OOM killed" and "pod was OOM
/// killed" are close, but "container ran out of memory" is not close to "OOM killed". Use it as
/// a fallback when no model is available, or in tests; [`Embedder::semantic`] returns `false`.
/// The hashing is versioned by its model id (`hash:v1:<dims>`): changing it requires a new id.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dims: usize,
    model_id: String,
}

impl HashEmbedder {
    /// `dims` buckets (must be > 0; 384 matches MiniLM so columns stay compatible).
    pub fn new(dims: usize) -> Self {
        assert!(dims > 0, "HashEmbedder needs at least one dimension");
        Self {
            dims,
            model_id: format!("hash:v1:{dims}"),
        }
    }

    /// Embeds one text synchronously (cheap: microseconds).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dims];
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for w in &words {
            self.add(&mut v, b'u', &[w.as_bytes()], 1.0);
        }
        for pair in words.windows(2) {
            self.add(
                &mut v,
                b'b',
                &[pair[0].as_bytes(), b" ", pair[1].as_bytes()],
                BIGRAM_WEIGHT,
            );
        }
        if words.is_empty() {
            // Keep the unit-length contract (and pgvector cosine well-defined) for empty text.
            self.add(&mut v, b'e', &[], 1.0);
        }
        l2_normalize(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], tag: u8, parts: &[&[u8]], weight: f32) {
        let h = feature_hash(tag, parts);
        let idx = (h % self.dims as u64) as usize;
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[idx] += sign * weight;
    }
}

/// FNV-1a over `tag` and `parts`, then the SplitMix64 finaliser for well-mixed high and low bits.
fn feature_hash(tag: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(tag);
    for p in parts {
        for &b in *p {
            eat(b);
        }
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[async_trait::async_trait]
impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dims
    }

    fn semantic(&self) -> bool {
        false
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;
    use crate::embed::test_util::{norm, strings};

    #[tokio::test]
    async fn deterministic_unit_length() {
        let e = HashEmbedder::new(384);
        assert_eq!(e.model_id(), "hash:v1:384");
        assert_eq!(e.dimensions(), 384);
        assert!(!e.semantic());
        let texts = strings(&["pod OOM killed", "", "!!!", "Node worker-1 NotReady for 5m"]);
        let a = e.embed(&texts).await.unwrap();
        let b = e.embed(&texts).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), texts.len());
        for v in &a {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
        }
        // A fresh instance gives bit-identical vectors (no per-process seed).
        assert_eq!(HashEmbedder::new(384).embed_one("pod OOM killed"), a[0]);
        // Case and punctuation do not matter.
        assert_eq!(
            e.embed_one("POD, oom-killed!"),
            e.embed_one("pod oom killed")
        );
    }

    #[test]
    fn lexical_overlap_means_higher_cosine() {
        let e = HashEmbedder::new(384);
        let base = e.embed_one("pod api was OOM killed after exceeding its memory limit");
        let overlap = e.embed_one("pod web was OOM killed, memory limit too low");
        let unrelated = e.embed_one("TLS certificate expired for ingress gateway");
        let c_overlap = cosine(&base, &overlap);
        let c_unrelated = cosine(&base, &unrelated);
        assert!(c_overlap > 0.4, "overlap cosine {c_overlap}");
        assert!(
            c_overlap > c_unrelated + 0.3,
            "{c_overlap} vs {c_unrelated}"
        );
        assert!((cosine(&base, &base) - 1.0).abs() < 1e-5);
        // Word order matters a little (bigrams), so a permutation is close but not identical.
        let permuted = e.embed_one("killed OOM was api pod after exceeding its limit memory");
        let c_perm = cosine(&base, &permuted);
        assert!(c_perm > 0.7 && c_perm < 0.999, "{c_perm}");
    }
}
