//! GGUF (llama.cpp's model file, version 2 and 3): a reader that checks every length against
//! the file, and a writer.
//!
//! ```text
//! "GGUF" u32 version | u64 tensor count | u64 metadata count
//! metadata: (string key, u32 type, value)*      strings are u64 length + UTF-8
//! tensor infos: (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)*
//! padding to `general.alignment` (32), then the tensor data, each tensor aligned
//! ```
//! Dimensions are innermost first: a PyTorch `[out, in]` weight is stored as `[in, out]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::quant::{GgmlType, SUPPORTED};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// No real model has more; a larger count is a corrupt header, not a reason to allocate.
const MAX_COUNT: u64 = 1 << 24;
/// Tensors have at most this many dimensions in GGML.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any of the integer types, widened.
    Int(i64),
    /// `u64` values beyond `i64`'s range do not occur in practice; stored widened too.
    UInt(u64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(i) => u64::try_from(i).ok(),
            Value::UInt(u) => Some(u),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, outermost first (PyTorch's order; the file stores them reversed).
    pub shape: Vec<usize>,
    /// GGML type id.
    pub kind: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

/// A GGUF file, memory-mapped: the header parsed, tensors decoded on demand.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn fail<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(Error::Malformed {
            path: self.path.to_path_buf(),
            offset: self.at as u64,
            message: message.into(),
        })
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return self.fail(format!(
                "the file ends inside {what} ({n} bytes wanted, {left} left)"
            ));
        }
        let out = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return self.fail(format!("{what} is {n}, more than any real file holds"));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let start = self.at;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => {
                self.at = start;
                self.fail(format!("{what} is not UTF-8"))
            }
        }
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::Int(i64::from(self.array::<1>(key)?[0])),
            1 => Value::Int(i64::from(self.array::<1>(key)?[0] as i8)),
            2 => Value::Int(i64::from(u16::from_le_bytes(self.array(key)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(key)?))),
            4 => Value::Int(i64::from(self.u32(key)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(key)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(key)?))),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return self.fail(format!("{key}: boolean byte {b}")),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return self.fail(format!("{key}: arrays nested deeper than GGUF allows"));
                }
                let inner = self.u32(key)?;
                let n = self.count(key)?;
                let mut values = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    values.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => {
                let u = self.u64(key)?;
                i64::try_from(u).map_or(Value::UInt(u), Value::Int)
            }
            11 => Value::Int(i64::from_le_bytes(self.array(key)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            other => return self.fail(format!("{key}: unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Opens and checks a GGUF file: the header, and that every tensor's data lies inside
    /// the file and fills whole blocks of its type.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Malformed`] naming the byte where the file goes wrong.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let map = map_file(&file, path)?;
        let mut cursor = Cursor {
            bytes: &map,
            at: 0,
            path,
        };
        if cursor.take(4, "the magic number")? != MAGIC {
            return cursor.fail("not a GGUF file (no GGUF magic number)");
        }
        let version = cursor.u32("the version")?;
        if !(2..=3).contains(&version) {
            return cursor.fail(format!("GGUF version {version}; Ember reads 2 and 3"));
        }
        let n_tensors = cursor.count("the tensor count")?;
        let n_metadata = cursor.count("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = cursor.string("a metadata key")?;
            let kind = cursor.u32(&key)?;
            let value = cursor.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        // Capacity from the header only up to a bound: a corrupt count must not allocate.
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 12) as usize);
        for _ in 0..n_tensors {
            let name = cursor.string("a tensor name")?;
            let n_dims = cursor.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return cursor.fail(format!("tensor {name} has {n_dims} dimensions"));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let dim = cursor.u64(&name)?;
                if dim == 0 || dim > MAX_COUNT * 64 {
                    return cursor.fail(format!("tensor {name} has a dimension of {dim}"));
                }
                shape.push(dim as usize);
            }
            shape.reverse();
            let kind = cursor.u32(&name)?;
            let offset = cursor.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                shape,
                kind,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return cursor.fail(format!("general.alignment {v:?} is not a power of two")),
            },
        };
        let data_start = (cursor.at as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        for info in &tensors {
            let Some(values) = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
                return cursor.fail(format!(
                    "tensor {} has {:?} values, more than memory can hold",
                    info.name, info.shape
                ));
            };
            // A type Ember does not read is reported when that tensor is asked for.
            let Some(kind) = GgmlType::from_id(info.kind) else {
                continue;
            };
            let Some(bytes) = kind.bytes_for(values) else {
                return cursor.fail(format!(
                    "tensor {} has {values} values, not whole blocks of {}",
                    info.name,
                    kind.block_values()
                ));
            };
            let end = data_start
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(bytes as u64));
            if end.is_none_or(|end| end > file_len) {
                return Err(Error::Malformed {
                    path: path.to_path_buf(),
                    offset: data_start.saturating_add(info.offset),
                    message: format!(
                        "tensor {}'s {bytes} bytes reach past the end of the file ({file_len} bytes): \
                         truncated?",
                        info.name
                    ),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str, message: &str) -> Error {
        Error::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// A metadata value that must be a non-negative integer.
    ///
    /// # Errors
    /// [`Error::Metadata`] if it is missing or not one.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .ok_or_else(|| self.missing(key, "missing"))?
            .as_u64()
            .map(|u| u as usize)
            .ok_or_else(|| self.missing(key, "not a non-negative integer"))
    }

    /// A metadata value that must be a number.
    ///
    /// # Errors
    /// [`Error::Metadata`] if it is missing or not one.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .ok_or_else(|| self.missing(key, "missing"))?
            .as_f64()
            .ok_or_else(|| self.missing(key, "not a number"))
    }

    /// A metadata value that must be a string.
    ///
    /// # Errors
    /// [`Error::Metadata`] if it is missing or not one.
    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| self.missing(key, "missing"))?
            .as_str()
            .ok_or_else(|| self.missing(key, "not a string"))
    }

    /// A metadata value that must be an array of strings.
    ///
    /// # Errors
    /// [`Error::Metadata`] if it is missing or not one.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let array = self
            .get(key)
            .ok_or_else(|| self.missing(key, "missing"))?
            .as_array()
            .ok_or_else(|| self.missing(key, "not an array"))?;
        array
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.missing(key, "not all strings"))
            })
            .collect()
    }

    /// The tensor's entry, by name.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's values as `f32`, in row-major order of [`TensorInfo::shape`].
    ///
    /// # Errors
    /// [`Error::MissingTensor`], or [`Error::UnsupportedType`] for a type Ember cannot decode.
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let kind = GgmlType::from_id(info.kind).ok_or_else(|| Error::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            kind: GgmlType::name_of(info.kind),
            supported: SUPPORTED,
        })?;
        let values = info.shape.iter().product::<usize>();
        let bytes = kind.bytes_for(values).expect("checked when opened");
        let start = (self.data_start + info.offset) as usize;
        Ok((
            info.shape.clone(),
            kind.decode(&self.map[start..start + bytes]),
        ))
    }
}

#[allow(unsafe_code)]
fn map_file(file: &std::fs::File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and lives as long as the `GgufFile`; if another process
    // truncated the file meanwhile, reads past its new end would fault, as with any mmap'd
    // model loader (llama.cpp's included). Ember never writes a file it has mapped.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))
}

/// A GGUF file being put together in memory, then written atomically.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_of(value: &Value) -> u32 {
    match value {
        Value::Int(_) => 11,
        Value::UInt(_) => 10,
        Value::Float(_) => 12,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int(i) => out.extend(i.to_le_bytes()),
        Value::UInt(u) => out.extend(u.to_le_bytes()),
        Value::Float(f) => out.extend(f.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => write_string(out, s),
        Value::Array(values) => {
            let inner = values.first().map_or(8, type_of);
            out.extend(inner.to_le_bytes());
            out.extend((values.len() as u64).to_le_bytes());
            for v in values {
                write_value(out, v);
            }
        }
    }
}

impl GgufWriter {
    /// Adds a metadata entry. Integers are written as `u32` where llama.cpp expects that
    /// width (its loader checks the type of counts like `llama.block_count`), so give those
    /// as [`Value::UInt`] below `u32::MAX`; see [`GgufWriter::to_bytes`].
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        self.metadata.push((key.into(), value));
    }

    /// Adds a tensor of `shape` (outermost first) from row-major `values`, encoded as `kind`
    /// (F32, F16 or Q8_0; Q8_0 needs a last dimension that is a multiple of 32, else F16 is
    /// used as llama.cpp's converter does).
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        values: &[f32],
        kind: GgmlType,
    ) {
        let kind = match kind {
            GgmlType::Q8_0 if !shape.last().is_some_and(|d| d.is_multiple_of(32)) => GgmlType::F16,
            GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 => kind,
            _ => GgmlType::F16,
        };
        self.tensors
            .push((name.into(), shape.to_vec(), kind, kind.encode(values)));
    }

    /// The file's bytes. Metadata integers go out as `u32` when they fit (the width
    /// llama.cpp and `gguf`'s writer use for counts and sizes), floats as `f32`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            match value {
                Value::UInt(u) if *u <= u64::from(u32::MAX) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend((*u as u32).to_le_bytes());
                }
                Value::Float(f) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend((*f as f32).to_le_bytes());
                }
                Value::Array(values) if values.iter().all(|v| matches!(v, Value::Int(_))) => {
                    // Token types: i32, as llama.cpp writes them.
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((values.len() as u64).to_le_bytes());
                    for v in values {
                        if let Value::Int(i) = v {
                            out.extend((*i as i32).to_le_bytes());
                        }
                    }
                }
                other => {
                    out.extend(type_of(other).to_le_bytes());
                    write_value(&mut out, other);
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, shape, kind, data) in &self.tensors {
            write_string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for dim in shape.iter().rev() {
                out.extend((*dim as u64).to_le_bytes());
            }
            out.extend(kind.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        let data_start = out.len();
        for ((_, _, _, data), offset) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + offset as usize, 0);
            out.extend(data);
        }
        out
    }

    /// Writes the file atomically (a temporary file beside it, then a rename).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(ember_tokenizer::write_atomically(path, &self.to_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = GgufWriter::default();
        writer.set("general.architecture", Value::String("llama".into()));
        writer.set("llama.block_count", Value::UInt(2));
        writer.set("llama.rope.freq_base", Value::Float(10000.0));
        writer.set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
        let values = (0..64).map(|i| i as f32 / 8.0).collect::<Vec<_>>();
        writer.tensor("w", &[2, 32], &values, GgmlType::F32);
        writer.tensor("q", &[2, 32], &values, GgmlType::Q8_0);
        writer.to_bytes()
    }

    #[test]
    fn written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, sample()).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.str("general.architecture").unwrap(), "llama");
        assert_eq!(file.usize("llama.block_count").unwrap(), 2);
        assert_eq!(file.f64("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(file.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b"]);
        let (shape, values) = file.tensor("w").unwrap();
        assert_eq!(shape, [2, 32]);
        assert_eq!(values[63], 63.0 / 8.0);
        let (_, quantised) = file.tensor("q").unwrap();
        assert!((quantised[63] - 63.0 / 8.0).abs() < 0.02);
        assert!(matches!(
            file.tensor("nope"),
            Err(Error::MissingTensor { .. })
        ));
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        for len in 0..bytes.len() {
            std::fs::write(&path, &bytes[..len]).unwrap();
            match GgufFile::open(&path) {
                Err(Error::Malformed { .. }) => {}
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_tensor_type_is_named_when_read() {
        let mut bytes = sample();
        // Patch tensor "w"'s type from F32 (0) to Q4_K (12): after its name come the number
        // of dimensions (u32), two dimensions (u64 each), then the type.
        let name = b"\x01\x00\x00\x00\x00\x00\x00\x00w";
        let start = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
        let kind = start + 4 + 2 * 8;
        bytes[kind..kind + 4].copy_from_slice(&12u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let error = file.tensor("w").unwrap_err().to_string();
        assert!(error.contains("Q4_K"), "{error}");
    }
}
