//! Rows for training: conversations padded to a common length, or packed several to a row.

use crate::{Error, Rendered, Result};

/// Segment id of padding tokens.
pub const PAD_SEGMENT: u32 = u32::MAX;

/// One row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `true` where the token is trained on (see [`Rendered::mask`]); always `false` on padding.
    pub mask: Vec<bool>,
    /// Position of each token within its own conversation (restarts at 0 for each one).
    pub positions: Vec<u32>,
    /// Which conversation of the row each token belongs to ([`PAD_SEGMENT`] for padding). A
    /// token may attend only to earlier tokens of its own segment.
    pub segments: Vec<u32>,
}

impl Row {
    /// Flags of the next-token targets `ids[1..]`.
    pub fn target_mask(&self) -> Vec<bool> {
        self.mask.iter().skip(1).copied().collect()
    }

    /// Whether query `query` may attend to key `key` (causal, within one segment).
    pub fn may_attend(&self, query: usize, key: usize) -> bool {
        key <= query
            && self.segments[query] == self.segments[key]
            && self.segments[query] != PAD_SEGMENT
    }

    /// Tokens that are padding.
    pub fn padding(&self) -> usize {
        self.segments.iter().filter(|&&s| s == PAD_SEGMENT).count()
    }

    fn empty(capacity: usize) -> Self {
        Self {
            ids: Vec::with_capacity(capacity),
            mask: Vec::with_capacity(capacity),
            positions: Vec::with_capacity(capacity),
            segments: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, item: &Rendered, segment: u32) {
        self.ids.extend_from_slice(&item.ids);
        self.mask.extend_from_slice(&item.mask);
        self.positions.extend(0..item.ids.len() as u32);
        self.segments
            .extend(std::iter::repeat_n(segment, item.ids.len()));
    }

    fn pad_to(&mut self, len: usize, pad: u32) {
        let missing = len - self.ids.len();
        self.ids.extend(std::iter::repeat_n(pad, missing));
        self.mask.extend(std::iter::repeat_n(false, missing));
        self.positions.extend(std::iter::repeat_n(0, missing));
        self.segments
            .extend(std::iter::repeat_n(PAD_SEGMENT, missing));
    }
}

fn truncated(item: &Rendered, max_len: usize) -> Rendered {
    let len = item.ids.len().min(max_len);
    Rendered {
        ids: item.ids[..len].to_vec(),
        mask: item.mask[..len].to_vec(),
    }
}

fn check(items: &[Rendered], len: usize) -> Result<()> {
    if len < 2 {
        return Err(Error::Config(format!(
            "rows need at least 2 tokens, got {len}"
        )));
    }
    if items.iter().any(|i| i.ids.len() != i.mask.len()) {
        return Err(Error::Config(
            "a rendered item has as many mask flags as ids".into(),
        ));
    }
    Ok(())
}

/// One conversation per row, cut to `max_len` tokens and right-padded with `pad` to the
/// longest row. Returns the rows and how many conversations were cut.
///
/// # Errors
/// `max_len < 2`.
pub fn pad_rows(items: &[Rendered], pad: u32, max_len: usize) -> Result<(Vec<Row>, usize)> {
    check(items, max_len)?;
    let len = items
        .iter()
        .map(|i| i.ids.len().min(max_len))
        .max()
        .unwrap_or(0);
    let cut = items.iter().filter(|i| i.ids.len() > max_len).count();
    let rows = items
        .iter()
        .map(|item| {
            let mut row = Row::empty(len);
            row.push(&truncated(item, max_len), 0);
            row.pad_to(len, pad);
            row
        })
        .collect();
    Ok((rows, cut))
}

/// Several conversations per row of exactly `row_len` tokens, placed best-fit decreasing
/// (each, longest first, into the row it leaves the least room in), so that little of a batch
/// is padding. Conversations longer than a row are cut. Returns the rows and how many
/// conversations were cut.
///
/// # Errors
/// `row_len < 2`.
pub fn pack_rows(items: &[Rendered], pad: u32, row_len: usize) -> Result<(Vec<Row>, usize)> {
    check(items, row_len)?;
    let cut = items.iter().filter(|i| i.ids.len() > row_len).count();
    let mut order = (0..items.len()).collect::<Vec<_>>();
    // Longest first; ties in input order, so packing is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].ids.len().min(row_len)));
    let mut rows: Vec<(Row, u32)> = Vec::new();
    for index in order {
        let item = truncated(&items[index], row_len);
        let best = rows
            .iter()
            .enumerate()
            .filter(|(_, (row, _))| row.ids.len() + item.ids.len() <= row_len)
            .min_by_key(|(_, (row, _))| row_len - row.ids.len() - item.ids.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let (row, segments) = &mut rows[i];
                row.push(&item, *segments);
                *segments += 1;
            }
            None => {
                let mut row = Row::empty(row_len);
                row.push(&item, 0);
                rows.push((row, 1));
            }
        }
    }
    Ok((
        rows.into_iter()
            .map(|(mut row, _)| {
                row.pad_to(row_len, pad);
                row
            })
            .collect(),
        cut,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize, first: u32) -> Rendered {
        Rendered {
            ids: (first..first + len as u32).collect(),
            mask: (0..len).map(|i| i % 2 == 1).collect(),
        }
    }

    #[test]
    fn padding_keeps_each_conversation_and_masks_the_pads() {
        let items = [item(3, 10), item(5, 20), item(9, 30)];
        let (rows, cut) = pad_rows(&items, 0, 6).unwrap();
        assert_eq!(cut, 1);
        assert!(rows.iter().all(|r| r.ids.len() == 6));
        assert_eq!(rows[0].ids, [10, 11, 12, 0, 0, 0]);
        assert_eq!(rows[0].mask, [false, true, false, false, false, false]);
        assert_eq!(rows[2].ids, [30, 31, 32, 33, 34, 35]);
        assert_eq!(rows[1].target_mask(), [true, false, true, false, false]);
    }

    #[test]
    fn packing_never_lets_one_conversation_see_another() {
        let items = (0..12)
            .map(|i| item(3 + (i * 7) % 11, 100 * i as u32))
            .collect::<Vec<_>>();
        let (rows, cut) = pack_rows(&items, 0, 16).unwrap();
        assert_eq!(cut, 0);
        let mut seen = Vec::new();
        for row in &rows {
            assert_eq!(row.ids.len(), 16);
            for query in 0..16 {
                for key in 0..16 {
                    if row.may_attend(query, key) {
                        // Same conversation: ids of one item lie in one block of 100.
                        assert_eq!(row.ids[query] / 100, row.ids[key] / 100);
                    }
                }
                // Positions restart for every conversation.
                if query > 0 && row.segments[query] != row.segments[query - 1] {
                    assert!(row.positions[query] == 0 || row.segments[query] == PAD_SEGMENT);
                }
            }
            for (s, &id) in row.segments.iter().zip(&row.ids) {
                if *s != PAD_SEGMENT {
                    seen.push(id);
                }
            }
        }
        // Every token of every conversation is packed exactly once.
        let mut all = items.iter().flat_map(|i| i.ids.clone()).collect::<Vec<_>>();
        all.sort();
        seen.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn best_fit_wastes_little() {
        // Lengths 3..=13 into rows of 16: 88 tokens, so 6 rows at best (96 slots).
        let items = (3..=13).map(|len| item(len, 0)).collect::<Vec<_>>();
        let (rows, _) = pack_rows(&items, 0, 16).unwrap();
        let padding: usize = rows.iter().map(Row::padding).sum();
        assert_eq!(rows.len() * 16 - padding, 88);
        assert!(rows.len() <= 6, "{} rows", rows.len());
    }

    #[test]
    fn rows_too_short_to_learn_from_are_an_error() {
        assert!(pack_rows(&[item(3, 0)], 0, 1).is_err());
        assert!(pad_rows(&[item(3, 0)], 0, 0).is_err());
    }
}
