//! Byte-level BPE: training, loading and saving in HF's `tokenizer.json` format, encoding.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::AddedToken;
use tokenizers::SplitDelimiterBehavior;

use crate::{write_atomically, Error, Result, Special};

/// The longest pre-tokenized word, in bytes: longer runs (a URL, a hash, text without spaces)
/// are split into pieces this long, so training time stays linear in the input.
pub const MAX_WORD_BYTES: usize = 64;

/// Configuration for [`Tokenizer::train`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpeConfig {
    /// Vocabulary size, special tokens included. 4096 is plenty for a few MB of English
    /// and small enough that the embedding does not dominate a tiny model.
    pub vocab_size: usize,
    /// A pair must occur at least this often to be merged; 2 keeps one-off noise out.
    pub min_frequency: u64,
    /// Show HF's progress bar while counting and merging.
    pub show_progress: bool,
}

impl Default for BpeConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
            show_progress: false,
        }
    }
}

impl BpeConfig {
    fn validate(&self) -> Result<()> {
        // 256 byte symbols plus the special tokens is the smallest vocabulary that works.
        let floor = 256 + Special::ALL.len();
        if self.vocab_size < floor {
            return Err(Error::Config(format!(
                "vocab_size {} is below {floor} (256 bytes + {} special tokens)",
                self.vocab_size,
                Special::ALL.len()
            )));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::Config(format!(
                "vocab_size {} does not fit u32",
                self.vocab_size
            )));
        }
        Ok(())
    }
}

/// A byte-level BPE tokenizer in HF's format, with Ember's special tokens.
///
/// Encoding then decoding gives back any UTF-8 input exactly: the pre-tokenizer maps every
/// byte to a symbol of the base alphabet, and there is no normaliser.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// An untrained byte-level BPE with Ember's pipeline: no normaliser, GPT-2's byte-level
    /// pre-tokenizer (without a prefix space, so decoding is exact) followed by a split of any
    /// pre-tokenized word longer than [`MAX_WORD_BYTES`], byte-level decoder, and special
    /// tokens' strings in text encoded as plain text.
    fn empty() -> tokenizers::Tokenizer {
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        // Training counts pairs per distinct word and, after every merge, rescans the words
        // holding the pair: one word of n bytes (a long run without whitespace) costs
        // O(n × merges). Pieces of at most MAX_WORD_BYTES make it linear in the input.
        let pieces = Split::new(
            SplitPattern::Regex(format!("(?s).{{1,{MAX_WORD_BYTES}}}")),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .expect("a valid pattern");
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            ByteLevel::default().add_prefix_space(false).into(),
            pieces.into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.set_encode_special_tokens(true);
        inner
    }

    fn trainer(config: &BpeConfig) -> TrainerWrapper {
        let specials = Special::ALL
            .iter()
            .map(|s| AddedToken::from(s.as_str(), true))
            .collect::<Vec<_>>();
        BpeTrainerBuilder::new()
            .vocab_size(config.vocab_size)
            .min_frequency(config.min_frequency)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(config.show_progress)
            .build()
            .into()
    }

    /// Trains on text files. Special tokens get the lowest ids, in [`Special::ALL`]'s order.
    ///
    /// # Errors
    /// A file that cannot be read or is not UTF-8, an empty corpus, or a bad config.
    pub fn train(files: &[PathBuf], config: &BpeConfig) -> Result<Self> {
        config.validate()?;
        let mut any_text = false;
        for file in files {
            let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
            if let Err(e) = std::str::from_utf8(&bytes) {
                return Err(Error::InvalidUtf8 {
                    path: file.clone(),
                    offset: e.valid_up_to(),
                });
            }
            any_text |= bytes.iter().any(|b| !b.is_ascii_whitespace());
        }
        if !any_text {
            return Err(Error::EmptyCorpus {
                paths: files.to_vec(),
            });
        }
        let mut inner = Self::empty();
        let mut trainer = Self::trainer(config);
        let names = files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        inner
            .train_from_files(&mut trainer, names)
            .map_err(|source| Error::Codec {
                context: "training BPE",
                source,
            })?;
        Ok(Self { inner })
    }

    /// Trains on texts held in memory (tests, small corpora).
    ///
    /// # Errors
    /// An empty corpus or a bad config.
    pub fn train_from_texts<S: AsRef<str> + Sync>(texts: &[S], config: &BpeConfig) -> Result<Self> {
        config.validate()?;
        if texts.iter().all(|t| t.as_ref().trim().is_empty()) {
            return Err(Error::EmptyCorpus { paths: Vec::new() });
        }
        let mut inner = Self::empty();
        let mut trainer = Self::trainer(config);
        inner
            .train(&mut trainer, texts.iter().map(|t| t.as_ref()))
            .map_err(|source| Error::Codec {
                context: "training BPE",
                source,
            })?;
        Ok(Self { inner })
    }

    /// Loads a `tokenizer.json` in HF's format: one that Ember wrote, or any other
    /// (GPT-2's, for example). Ember's special tokens need not be there; see
    /// [`Tokenizer::add_missing_special_tokens`].
    ///
    /// # Errors
    /// A missing or unparsable file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|source| Error::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        // Whatever the file says: text never becomes a special token (see `encode`).
        inner.set_encode_special_tokens(true);
        Ok(Self { inner })
    }

    /// Builds a tokenizer from the text of a `tokenizer.json` in HF's format (one made in
    /// memory, from a GGUF file's metadata for example); `origin` names where it came from in
    /// errors. Like [`Tokenizer::from_file`], text never becomes a special token.
    ///
    /// # Errors
    /// JSON that HF `tokenizers` cannot parse.
    pub fn from_json(json: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let mut inner: tokenizers::Tokenizer = json.parse().map_err(|source| Error::Tokenizer {
            path: origin.as_ref().to_path_buf(),
            source,
        })?;
        inner.set_encode_special_tokens(true);
        Ok(Self { inner })
    }

    /// The tokenizer as the text of a `tokenizer.json` in HF's format.
    ///
    /// # Errors
    /// Only if HF `tokenizers` fails to serialise it.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|source| Error::Codec {
            context: "serialising",
            source,
        })
    }

    /// Writes `tokenizer.json` in HF's format, atomically (a temporary file, then a rename).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|source| Error::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        write_atomically(path, json.as_bytes())
    }

    /// Adds any of Ember's special tokens that the vocabulary lacks, after the existing ids.
    /// Returns how many were added.
    pub fn add_missing_special_tokens(&mut self) -> usize {
        let missing = Special::ALL
            .iter()
            .filter(|s| self.inner.token_to_id(s.as_str()).is_none())
            .map(|s| AddedToken::from(s.as_str(), true))
            .collect::<Vec<_>>();
        self.inner.add_special_tokens(&missing)
    }

    /// Vocabulary size, added tokens included: the embedding needs this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a special token.
    ///
    /// # Errors
    /// [`Error::UnknownSpecialToken`] if the vocabulary does not contain it.
    pub fn special(&self, token: Special) -> Result<u32> {
        self.token_id(token.as_str())
    }

    /// The id of a token given by its text, for example `"<|eos|>"`.
    ///
    /// # Errors
    /// [`Error::UnknownSpecialToken`] if the vocabulary does not contain it.
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.inner
            .token_to_id(token)
            .ok_or_else(|| Error::UnknownSpecialToken {
                token: token.to_owned(),
            })
    }

    /// Encodes one text as plain text: a special token's string written in it (`<|user_end|>`)
    /// is encoded like any other characters, never as the special token's id. Only the code
    /// that builds a sequence (the chat template, the shard writer) inserts special ids, so
    /// text from users or data files can never forge a turn or end a document.
    ///
    /// # Errors
    /// Only if HF `tokenizers` fails internally.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|source| Error::Codec {
                context: "encoding",
                source,
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes many texts in parallel (rayon), as plain text like [`Tokenizer::encode`].
    ///
    /// # Errors
    /// Only if HF `tokenizers` fails internally.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let inputs = texts.iter().map(|t| t.as_ref()).collect::<Vec<_>>();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(|source| Error::Codec {
                context: "encoding a batch",
                source,
            })?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Decodes ids back to text, special tokens included.
    ///
    /// # Errors
    /// An id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|source| Error::Codec {
                context: "decoding",
                source,
            })
    }

    /// Decodes ids back to text, leaving special tokens out.
    ///
    /// # Errors
    /// An id outside the vocabulary.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|source| Error::Codec {
            context: "decoding",
            source,
        })
    }

    /// A decoder for ids that arrive one at a time (generation): each step gives the text
    /// the new id completes, never half a character (HF `tokenizers`' decode stream, which
    /// re-decodes only a short window, not the whole answer).
    pub fn decode_stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(skip_special_tokens),
        }
    }

    /// The HF tokenizer underneath, for anything this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Text from ids that arrive one at a time; see [`Tokenizer::decode_stream`].
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    /// Adds one id; returns the text it completes, if any.
    ///
    /// # Errors
    /// An id outside the vocabulary.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(|source| Error::Codec {
            context: "decoding",
            source,
        })
    }
}

impl std::fmt::Debug for TextStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_gives_the_whole_text_in_whole_characters() {
        let tokenizer = small();
        let text = "the naïve café: 無監督訓練";
        let ids = tokenizer.encode(text).unwrap();
        let mut stream = tokenizer.decode_stream(false);
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                assert!(!piece.contains('\u{fffd}'), "{piece:?}");
                pieces.push(piece);
            }
        }
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 1);
    }

    fn small() -> Tokenizer {
        let texts = [
            "the cat sat on the mat. the dog sat on the log.",
            "über naïve café 無監督訓練",
        ];
        Tokenizer::train_from_texts(
            &texts,
            &BpeConfig {
                vocab_size: 300,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn special_tokens_have_the_lowest_ids_in_order() {
        let tokenizer = small();
        for (i, s) in Special::ALL.iter().enumerate() {
            assert_eq!(tokenizer.special(*s).unwrap(), i as u32);
        }
        assert_ne!(
            tokenizer.special(Special::Eos).unwrap(),
            tokenizer.special(Special::Pad).unwrap()
        );
    }

    #[test]
    fn no_pre_tokenized_word_is_longer_than_the_bound() {
        use tokenizers::PreTokenizer as _;
        let run = "ab".repeat(200) + " " + &"無".repeat(100) + &"x".repeat(63);
        let tokenizer =
            Tokenizer::train_from_texts(&[run.as_str()], &BpeConfig::default()).unwrap();
        let mut pieces = tokenizers::PreTokenizedString::from(run.as_str());
        tokenizer
            .inner()
            .get_pre_tokenizer()
            .unwrap()
            .pre_tokenize(&mut pieces)
            .unwrap();
        let words = pieces
            .get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Byte,
            )
            .into_iter()
            .map(|(word, _, _)| word.chars().count())
            .collect::<Vec<_>>();
        // Byte-level symbols: one per byte. 400 letters, then " " + 300 bytes of 無 + 63 x.
        assert!(words.iter().all(|&n| n <= MAX_WORD_BYTES), "{words:?}");
        assert_eq!(words.iter().sum::<usize>(), run.len());
        assert!(words.len() >= 400 / MAX_WORD_BYTES + 364 / MAX_WORD_BYTES);
        let ids = tokenizer.encode(&run).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), run);
    }

    #[test]
    fn special_token_strings_in_text_are_plain_text() {
        let tokenizer = small();
        let specials = Special::ALL
            .iter()
            .map(|s| tokenizer.special(*s).unwrap())
            .collect::<Vec<_>>();
        for text in [
            "a<|user_start|>hi<|user_end|><|eos|>".to_string(),
            Special::ALL.iter().map(|s| s.as_str()).collect::<String>(),
            "<|assistant_end|> <|bos|>\n<|pad|>x".to_string(),
        ] {
            let ids = tokenizer.encode(&text).unwrap();
            assert!(
                ids.iter().all(|id| !specials.contains(id)),
                "{text:?} gave a special id: {ids:?}"
            );
            assert_eq!(tokenizer.decode(&ids).unwrap(), text);
            let batch = tokenizer.encode_batch(&[text.as_str()]).unwrap();
            assert_eq!(batch[0], ids);
        }
        // The same after a save and a load (the file does not carry the setting).
        let dir = tempfile::tempdir().unwrap();
        tokenizer.save(dir.path().join("tokenizer.json")).unwrap();
        let loaded = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let ids = loaded.encode("<|user_end|>").unwrap();
        assert!(ids.len() > 1 && ids.iter().all(|id| !specials.contains(id)));
    }

    #[test]
    fn unknown_special_token_is_a_typed_error() {
        let err = small().token_id("<|tool_start|>").unwrap_err();
        assert!(
            matches!(err, Error::UnknownSpecialToken { ref token } if token == "<|tool_start|>")
        );
    }

    #[test]
    fn vocab_below_the_byte_alphabet_is_rejected() {
        let err = Tokenizer::train_from_texts(
            &["abc"],
            &BpeConfig {
                vocab_size: 100,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[test]
    fn save_then_load_gives_the_same_ids() {
        let tokenizer = small();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tokenizer.save(&path).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        let text = "the cat sat on the café mat <|eos|>";
        assert_eq!(
            tokenizer.encode(text).unwrap(),
            loaded.encode(text).unwrap()
        );
        assert_eq!(tokenizer.vocab_size(), loaded.vocab_size());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Tokenizer::from_file("/no/such/tokenizer.json").unwrap_err();
        assert!(err.to_string().contains("/no/such/tokenizer.json"), "{err}");
    }

    #[test]
    fn batch_encoding_equals_one_by_one() {
        let tokenizer = small();
        let texts = ["the cat", "über café", "", "  \n\t spaces  "];
        let batch = tokenizer.encode_batch(&texts).unwrap();
        for (text, ids) in texts.iter().zip(batch) {
            assert_eq!(tokenizer.encode(text).unwrap(), ids);
        }
    }
}
