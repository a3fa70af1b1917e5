//! Stop strings on streamed text: text is released as soon as it cannot be the start of a
//! stop string, and an answer ends just before the first stop string it contains.

/// Text of one answer as it streams, checked against its stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    /// Decoded but not yet released: the longest end of it that starts a stop string.
    held: String,
}

/// What [`StopScanner::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Text to release now (possibly empty).
    pub text: String,
    /// Whether a stop string was reached: the answer ends with `text`.
    pub stopped: bool,
}

impl StopScanner {
    /// A scanner for these stop strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds decoded text; returns what can be released.
    pub fn push(&mut self, piece: &str) -> Scanned {
        self.held.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Scanned {
                text,
                stopped: true,
            };
        }
        // Hold back the longest end of the text that a stop string starts with.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        Scanned {
            text,
            stopped: false,
        }
    }

    /// The answer ended for another reason: whatever is held is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns the released text and whether a stop was hit.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut scanner = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let scanned = scanner.push(piece);
            out.push_str(&scanned.text);
            if scanned.stopped {
                return (out, true);
            }
        }
        out.push_str(&scanner.finish());
        (out, false)
    }

    #[test]
    fn a_stop_split_over_pieces_ends_the_text_before_it() {
        assert_eq!(
            run(&["STOP"], &["ab", "cS", "TO", "Pxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["one\n", "\ntwo"]), ("one".into(), true));
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_stop() {
        let mut scanner = StopScanner::new(vec!["END".into()]);
        assert_eq!(scanner.push("hello E").text, "hello ");
        assert_eq!(scanner.push("N").text, "");
        assert_eq!(scanner.push("x").text, "ENx");
        assert_eq!(run(&["END"], &["a", "EN"]), ("aEN".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_characters_stay_whole() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut scanner = StopScanner::new(vec![String::new()]);
        assert_eq!(
            scanner.push("abc"),
            Scanned {
                text: "abc".into(),
                stopped: false
            }
        );
    }
}
