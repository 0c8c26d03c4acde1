//! The 1000 ImageNet class names DiT is conditioned on, as `DiTPipeline`'s `id2label` ("tench,
//! Tinca tinca", ...; `assets/imagenet_labels.txt.gz`, one id a line, made from timm's synset
//! lemmas: see tools/README.md). Every comma-separated synonym names its id; where one names
//! two (e.g. "crane", 134 and 517) the higher id wins, as `DiTPipeline.labels` builds its dict.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::OnceLock;

static GZ: &[u8] = include_bytes!("../../assets/imagenet_labels.txt.gz");

pub struct ImagenetLabels {
    /// `id2label[id]`, the whole line.
    names: Vec<String>,
    /// Synonym → id.
    by_name: BTreeMap<String, u32>,
}

/// The embedded labels (decompressed once).
pub fn labels() -> &'static ImagenetLabels {
    static L: OnceLock<ImagenetLabels> = OnceLock::new();
    L.get_or_init(|| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(GZ).read_to_string(&mut text).expect("the embedded ImageNet labels are valid gzip text");
        let names: Vec<String> = text.lines().map(str::to_string).collect();
        let mut by_name = BTreeMap::new();
        for (id, line) in names.iter().enumerate() {
            for syn in line.split(',') {
                by_name.insert(syn.trim().to_string(), id as u32);
            }
        }
        ImagenetLabels { names, by_name }
    })
}

impl ImagenetLabels {
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `id2label[id]`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    /// A label name's id (`DiTPipeline.get_label_ids`; case-insensitive when no exact match).
    /// An unknown name is an error listing the closest names.
    pub fn id(&self, name: &str) -> Result<u32> {
        let name = name.trim();
        if let Some(&id) = self.by_name.get(name) {
            return Ok(id);
        }
        let lower = name.to_lowercase();
        if let Some(id) = self.by_name.iter().filter(|(k, _)| k.to_lowercase() == lower).map(|(_, &id)| id).max() {
            return Ok(id);
        }
        let mut near: Vec<(usize, &str)> = self.by_name.keys().map(|k| (distance(&lower, &k.to_lowercase()), k.as_str())).collect();
        near.sort();
        let shown: Vec<String> = near.iter().take(5).map(|(_, k)| format!("'{k}' ({})", self.by_name[*k])).collect();
        Err(Error::Unsupported(format!("'{name}' is not an ImageNet class name; closest: {} (or give the id, 0..{})", shown.join(", "), self.len() - 1)))
    }

    /// `--class-label`: an id (`207`) or a name (`golden retriever`).
    pub fn resolve(&self, s: &str) -> Result<u32> {
        match s.trim().parse::<u32>() {
            Ok(id) if (id as usize) < self.len() => Ok(id),
            Ok(id) => Err(Error::Unsupported(format!("class id {id} is past ImageNet's {} classes (0..{})", self.len(), self.len() - 1))),
            Err(_) => self.id(s),
        }
    }
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
