//! `[store]` and `[action-cache]`: the content-addressed store on disk and
//! what the action cache inlines.

use serde::Deserialize;

use super::ByteSize;

/// `[store]`: the content-addressed store on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Store {
    /// The most bytes the store may keep.
    pub max_size: ByteSize,
    /// Garbage collection starts above this percentage of `max-size`...
    pub high_watermark: u8,
    /// ...and evicts least recently used entries down to this percentage.
    pub low_watermark: u8,
    /// fsync every blob before publishing it.
    pub fsync: bool,
    /// The limit on the sum of blob sizes in one batch call.
    pub max_batch_size: ByteSize,
    /// One user's share of the store; `None`: half of `max-size`; 0: none.
    pub per_user_max_size: Option<ByteSize>,
}

impl Store {
    /// The per-user share in effect, in bytes (0: none).
    pub fn per_user_max_size(&self) -> u64 {
        self.per_user_max_size.map_or(self.max_size.0 / 2, |s| s.0)
    }
}

/// `[action-cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ActionCache {
    /// The most bytes inlined into one GetActionResult response.
    pub inline_max_size: ByteSize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            max_size: ByteSize(10 << 30),
            high_watermark: 90,
            low_watermark: 80,
            fsync: false,
            max_batch_size: ByteSize(4 << 20),
            per_user_max_size: None,
        }
    }
}

impl Default for ActionCache {
    fn default() -> Self {
        ActionCache {
            inline_max_size: ByteSize(1 << 20),
        }
    }
}

impl Store {
    /// Refuses watermarks and batch limits that cannot work. Returns the
    /// offending key and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=100).contains(&self.high_watermark) {
            return Err((
                "high-watermark",
                format!("{} is not a percentage from 1 to 100", self.high_watermark),
            ));
        }
        if self.low_watermark >= self.high_watermark {
            return Err((
                "low-watermark",
                format!(
                    "{} must be below high-watermark ({})",
                    self.low_watermark, self.high_watermark
                ),
            ));
        }
        if self.max_batch_size.0 < 4 << 20 {
            return Err((
                "max-batch-size",
                format!(
                    "{} bytes is below the 4 MiB that clients may assume",
                    self.max_batch_size.0
                ),
            ));
        }
        if self.max_batch_size.0 > 64 << 20 {
            return Err((
                "max-batch-size",
                format!(
                    "{} bytes is above the 64 MiB maximum",
                    self.max_batch_size.0
                ),
            ));
        }
        Ok(())
    }
}
