//! A corpus turned into token shards on disk: compact integer files, memory-mapped for
//! training, with a deterministic train/validation split.
//!
//! (Over 500 lines because its tests — the split, the u16/u32 widths, damaged files — sit
//! beside the one format they check.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{write_atomically, Error, Result, Special, Tokenizer};

const MAGIC: &[u8; 8] = b"EMBTOK1\0";
const HEADER_BYTES: usize = 16;

/// Configuration for [`write_shards`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// Share of the corpus held out for validation. 5% of a few MB is enough for a stable
    /// validation loss.
    pub val_fraction: f64,
    /// Files are cut into blocks of about this many bytes (at line ends) and each block
    /// goes to one split, so that one long file still yields both splits and the held-out
    /// text is spread over the whole corpus rather than being its last pages.
    pub block_bytes: usize,
    /// Seed of the split: the same corpus and seed always give the same split.
    pub seed: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            val_fraction: 0.05,
            block_bytes: 8192,
            seed: 0,
        }
    }
}

/// What [`write_shards`] wrote: stored beside the shards as `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Vocabulary size of the tokenizer that encoded the corpus.
    pub vocab_size: usize,
    /// Tokens in `train.bin`.
    pub train_tokens: u64,
    /// Tokens in `val.bin`.
    pub val_tokens: u64,
    /// UTF-8 bytes of text behind `train.bin`.
    pub train_bytes: u64,
    /// UTF-8 bytes of text behind `val.bin`: with `val_tokens`, gives bits per byte.
    pub val_bytes: u64,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// The split's configuration.
    pub config: ShardConfig,
}

impl ShardMeta {
    /// Tokens per byte of validation text: bits per byte = loss (nats/token) / ln 2 × this.
    pub fn val_tokens_per_byte(&self) -> f64 {
        self.val_tokens as f64 / self.val_bytes.max(1) as f64
    }

    /// Reads `meta.json` from a shard folder.
    ///
    /// # Errors
    /// A missing or unparsable file.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("meta.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::BadShard {
            path,
            reason: format!("bad meta.json: {e}"),
        })
    }
}

/// Lists the text files under `paths` (files, or folders walked recursively), sorted so that
/// the order never depends on the file system. Hidden files are skipped.
///
/// # Errors
/// A path that does not exist or a folder that cannot be read.
pub fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let mut entries = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(path, e)))
                .collect::<Result<Vec<_>>>()?;
            entries.sort();
            for entry in entries {
                let hidden = entry
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if !hidden {
                    walk(&entry, out)?;
                }
            }
        } else {
            out.push(path.to_path_buf());
        }
        Ok(())
    }
    let mut files = Vec::new();
    for path in paths {
        walk(path, &mut files)?;
    }
    Ok(files)
}

/// Reads a file as UTF-8.
///
/// # Errors
/// [`Error::Io`] or [`Error::InvalidUtf8`], naming the file.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| Error::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Cuts text into pieces of about `block_bytes`, at line ends where there are any.
fn blocks(text: &str, block_bytes: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + block_bytes).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if end < text.len() {
            if let Some(newline) = text[start..end].rfind('\n') {
                end = start + newline + 1;
            }
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust versions).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Encodes a corpus into `out_dir/train.bin`, `out_dir/val.bin` and `out_dir/meta.json`.
/// Each file ends with the end-of-text token, so documents are separated.
///
/// # Errors
/// An unreadable or non-UTF-8 file (named), an empty corpus, a corpus too small for both
/// splits, or an invalid config.
pub fn write_shards(
    tokenizer: &Tokenizer,
    paths: &[PathBuf],
    out_dir: &Path,
    config: &ShardConfig,
) -> Result<ShardMeta> {
    if !(0.0..1.0).contains(&config.val_fraction) || config.block_bytes == 0 {
        return Err(Error::Config(format!(
            "val_fraction must be in [0, 1) and block_bytes > 0, got {} and {}",
            config.val_fraction, config.block_bytes
        )));
    }
    let eos = tokenizer.special(Special::Eos)?;
    let files = corpus_files(paths)?;
    let texts = files
        .iter()
        .map(|f| read_text(f))
        .collect::<Result<Vec<_>>>()?;
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Error::EmptyCorpus {
            paths: paths.to_vec(),
        });
    }

    // (file index, block, is the file's last block, goes to validation)
    let mut pieces = Vec::new();
    for (file_index, (file, text)) in files.iter().zip(&texts).enumerate() {
        let file_blocks = blocks(text, config.block_bytes);
        let n = file_blocks.len();
        // The file's name, not its path: the same corpus splits the same wherever it lives
        // (each pipeline run writes its own copy into its own folder).
        let name = file
            .file_name()
            .map_or_else(|| file.to_string_lossy(), |n| n.to_string_lossy());
        for (i, block) in file_blocks.into_iter().enumerate() {
            let hash = fnv1a(&[
                &config.seed.to_le_bytes(),
                name.as_bytes(),
                &i.to_le_bytes(),
            ]);
            let is_val = (hash >> 11) as f64 / (1u64 << 53) as f64 <= config.val_fraction;
            pieces.push((
                file_index,
                block,
                i + 1 == n,
                is_val && config.val_fraction > 0.0,
            ));
        }
    }
    if config.val_fraction > 0.0 && !pieces.iter().any(|p| p.3) {
        // A small corpus may draw no validation block: hold out its largest (not a file's
        // trailing fragment, which may not fill one window).
        if let Some(largest) = pieces.iter_mut().max_by_key(|p| p.1.len()) {
            largest.3 = true;
        }
    }
    if pieces.iter().all(|p| p.3) {
        return Err(Error::Config(format!(
            "the corpus is too small to split ({} block(s) of {} bytes); lower block_bytes",
            pieces.len(),
            config.block_bytes
        )));
    }

    let encoded = tokenizer.encode_batch(&pieces.iter().map(|p| p.1).collect::<Vec<_>>())?;
    let mut train = Vec::new();
    let mut val = Vec::new();
    let (mut train_bytes, mut val_bytes) = (0u64, 0u64);
    for ((_, block, last_of_file, is_val), ids) in pieces.iter().zip(encoded) {
        let (split, bytes) = if *is_val {
            (&mut val, &mut val_bytes)
        } else {
            (&mut train, &mut train_bytes)
        };
        split.extend_from_slice(&ids);
        if *last_of_file {
            split.push(eos);
        }
        *bytes += block.len() as u64;
    }

    let vocab_size = tokenizer.vocab_size();
    write_shard(&out_dir.join("train.bin"), &train, vocab_size)?;
    write_shard(&out_dir.join("val.bin"), &val, vocab_size)?;
    let meta = ShardMeta {
        vocab_size,
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        train_bytes,
        val_bytes,
        files,
        config: config.clone(),
    };
    let json = serde_json::to_string_pretty(&meta).expect("ShardMeta serialises");
    write_atomically(&out_dir.join("meta.json"), json.as_bytes())?;
    Ok(meta)
}

/// Writes one shard: a 16-byte header (magic, bytes per token) then little-endian ids, two
/// bytes each when the vocabulary fits, four otherwise.
///
/// # Errors
/// The file cannot be written.
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + tokens.len() * width as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&width.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for &token in tokens {
        if width == 2 {
            bytes.extend_from_slice(&(token as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&token.to_le_bytes());
        }
    }
    write_atomically(path, &bytes)
}

/// A token shard, memory-mapped: opening it costs nothing, whatever its size.
#[derive(Debug)]
pub struct TokenShard {
    map: memmap2::Mmap,
    width: usize,
    len: usize,
}

impl TokenShard {
    /// Maps a shard written by [`write_shard`].
    ///
    /// # Errors
    /// A missing file, or one that is not a shard.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: the map is read-only and Ember never writes a shard in place (shards are
        // written to a temporary file and renamed), so the mapped bytes cannot change.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |reason: &str| Error::BadShard {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        if map.len() < HEADER_BYTES || &map[..8] != MAGIC {
            return Err(bad("missing header"));
        }
        let width = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
        if width != 2 && width != 4 {
            return Err(bad("token width is neither 2 nor 4 bytes"));
        }
        if !(map.len() - HEADER_BYTES).is_multiple_of(width) {
            return Err(bad("truncated"));
        }
        let len = (map.len() - HEADER_BYTES) / width;
        Ok(Self { map, width, len })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token at `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn get(&self, index: usize) -> u32 {
        assert!(index < self.len, "token {index} of a shard of {}", self.len);
        let at = HEADER_BYTES + index * self.width;
        let bytes = &self.map[at..at + self.width];
        match self.width {
            2 => u32::from(u16::from_le_bytes([bytes[0], bytes[1]])),
            _ => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }

    /// Copies `len` tokens starting at `start`.
    ///
    /// # Panics
    /// If the window runs past the end.
    pub fn window(&self, start: usize, len: usize) -> Vec<u32> {
        (start..start + len).map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BpeConfig;

    fn tokenizer() -> Tokenizer {
        Tokenizer::train_from_texts(
            &["to be or not to be, that is the question\n"],
            &BpeConfig {
                vocab_size: 300,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn shard_round_trip_both_widths() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = vec![0, 1, 65_535, 7, 42];
        write_shard(&dir.path().join("a.bin"), &tokens, 65_536).unwrap();
        let shard = TokenShard::open(&dir.path().join("a.bin")).unwrap();
        assert_eq!(shard.window(0, shard.len()), tokens);
        let wide = vec![0, 70_000, 3];
        write_shard(&dir.path().join("b.bin"), &wide, 100_000).unwrap();
        let shard = TokenShard::open(&dir.path().join("b.bin")).unwrap();
        assert_eq!((shard.len(), shard.get(1)), (3, 70_000));
        assert_eq!(
            std::fs::metadata(dir.path().join("a.bin")).unwrap().len(),
            16 + 2 * 5
        );
    }

    #[test]
    fn split_is_deterministic_and_covers_the_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus");
        std::fs::create_dir(&corpus).unwrap();
        let line = "to be or not to be, that is the question\n";
        std::fs::write(corpus.join("a.txt"), line.repeat(400)).unwrap();
        std::fs::write(corpus.join("b.txt"), line.repeat(50)).unwrap();
        let config = ShardConfig {
            val_fraction: 0.2,
            block_bytes: 256,
            seed: 3,
        };
        let tok = tokenizer();
        let a = write_shards(
            &tok,
            std::slice::from_ref(&corpus),
            &dir.path().join("s1"),
            &config,
        )
        .unwrap();
        let b = write_shards(
            &tok,
            std::slice::from_ref(&corpus),
            &dir.path().join("s2"),
            &config,
        )
        .unwrap();
        assert_eq!(a.train_tokens, b.train_tokens);
        assert_eq!(a.val_tokens, b.val_tokens);
        assert!(a.val_tokens > 0 && a.train_tokens > a.val_tokens);
        assert_eq!(a.train_bytes + a.val_bytes, (line.len() * 450) as u64);
        let train = std::fs::read(dir.path().join("s1/train.bin")).unwrap();
        assert_eq!(
            train,
            std::fs::read(dir.path().join("s2/train.bin")).unwrap()
        );
        // Both files end with EOS in one split or the other: two EOS in all.
        let eos = tok.special(Special::Eos).unwrap();
        let count = |name: &str| {
            let shard = TokenShard::open(&dir.path().join("s1").join(name)).unwrap();
            shard
                .window(0, shard.len())
                .into_iter()
                .filter(|&t| t == eos)
                .count()
        };
        assert_eq!(count("train.bin") + count("val.bin"), 2);
        // A copy of the corpus in another folder splits the same.
        let copy = dir.path().join("elsewhere/corpus");
        std::fs::create_dir_all(&copy).unwrap();
        for name in ["a.txt", "b.txt"] {
            std::fs::copy(corpus.join(name), copy.join(name)).unwrap();
        }
        write_shards(&tok, &[copy], &dir.path().join("s3"), &config).unwrap();
        assert_eq!(
            train,
            std::fs::read(dir.path().join("s3/train.bin")).unwrap()
        );
    }

    #[test]
    fn a_corpus_that_draws_no_validation_block_holds_out_its_largest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("small.txt");
        let line = "to be or not to be, that is the question\n";
        // Five blocks of about 256 bytes and a trailing fragment of one line.
        let text = line.repeat(31);
        std::fs::write(&file, &text).unwrap();
        let config = ShardConfig {
            val_fraction: 1e-12,
            block_bytes: 256,
            seed: 0,
        };
        let stats = write_shards(
            &tokenizer(),
            std::slice::from_ref(&file),
            &dir.path().join("s"),
            &config,
        )
        .unwrap();
        let largest = blocks(&text, 256).iter().map(|b| b.len()).max().unwrap();
        assert!(largest > 2 * line.len());
        assert_eq!(stats.val_bytes, largest as u64);
        assert_eq!(stats.train_bytes + stats.val_bytes, text.len() as u64);
    }

    #[test]
    fn invalid_utf8_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"ok\xff\xfe").unwrap();
        let err = write_shards(
            &tokenizer(),
            std::slice::from_ref(&bad),
            dir.path(),
            &ShardConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidUtf8 { ref path, offset: 2 } if *path == bad),
            "{err}"
        );
    }

    #[test]
    fn empty_corpus_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.txt"), "  \n").unwrap();
        let err = write_shards(
            &tokenizer(),
            &[dir.path().to_path_buf()],
            &dir.path().join("o"),
            &ShardConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::EmptyCorpus { .. }), "{err}");
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let err = corpus_files(&[PathBuf::from("/no/such/corpus")]).unwrap_err();
        assert!(err.to_string().contains("/no/such/corpus"), "{err}");
    }

    #[test]
    fn not_a_shard_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), b"hello world, not a shard").unwrap();
        let err = TokenShard::open(&dir.path().join("x.bin")).unwrap_err();
        assert!(matches!(err, Error::BadShard { .. }), "{err}");
    }

    #[test]
    fn blocks_cut_at_line_ends_and_cover_the_text() {
        let text = "ab\ncd\nef\n";
        let pieces = blocks(text, 4);
        assert_eq!(pieces, ["ab\n", "cd\n", "ef\n"]);
        // A line longer than a block is cut, but never inside a character.
        let long = "無監督訓練\n";
        let pieces = blocks(long, 4);
        assert_eq!(pieces.concat(), long);
        assert_eq!(pieces[0], "無監");
    }
}
