//! The labeler's preferences, shared by the families with one correct answer: correctness
//! first, then answering directly, ending cleanly and not repeating oneself.

fn normalise(text: &str) -> String {
    text.trim()
        .trim_end_matches(['.', '!'])
        .trim()
        .to_lowercase()
}

/// Whether some run of three words occurs twice.
pub fn repeats(text: &str) -> bool {
    let words = text
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>();
    let mut seen = std::collections::HashSet::new();
    words.windows(3).any(|w| !seen.insert(w.to_vec()))
}

/// Grades `answer` against the `expected` one, in [0, 1]:
/// - 1 for exactly the answer (case and a final period aside);
/// - 0.6 for the right answer followed by more text (it does not end cleanly), 0.4 if that
///   text repeats itself;
/// - for a wrong answer, 0.1 if it is at least short and free of repetition, else 0.
pub fn grade(answer: &str, expected: &str) -> f64 {
    let (answer_n, expected_n) = (normalise(answer), normalise(expected));
    if answer_n == expected_n {
        return 1.0;
    }
    let rest = answer_n.strip_prefix(&expected_n);
    let at_boundary = rest.is_some_and(|r| r.starts_with(|c: char| !c.is_alphanumeric()));
    if at_boundary {
        return if repeats(answer) { 0.4 } else { 0.6 };
    }
    let short = answer.trim().chars().count() <= 2 * expected.chars().count() + 10;
    if !answer.trim().is_empty() && short && !repeats(answer) {
        0.1
    } else {
        0.0
    }
}

/// How near `answer` comes to `expected`, in [0, 1]: one minus their Levenshtein distance
/// over characters (case and a final period aside), divided by the longer length. 1 for the
/// answer itself, 0 for nothing in common.
pub fn closeness(answer: &str, expected: &str) -> f64 {
    let a = normalise(answer).chars().collect::<Vec<_>>();
    let b = normalise(expected).chars().collect::<Vec<_>>();
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 1.0;
    }
    // One row of the edit-distance table at a time.
    let mut row = (0..=b.len()).collect::<Vec<_>>();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    1.0 - row[b.len()] as f64 / longer as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closeness_is_one_minus_the_edit_distance_over_the_longer_length() {
        assert_eq!(closeness("s-t-a-r", "s-t-a-r."), 1.0);
        // kitten → sitting: 3 edits over 7 characters.
        assert!((closeness("kitten", "sitting") - 4.0 / 7.0).abs() < 1e-12);
        // one substitution in 7 characters.
        assert!((closeness("s-t-a-e", "s-t-a-r") - 6.0 / 7.0).abs() < 1e-12);
        assert_eq!(closeness("abc", "xyz"), 0.0);
        assert_eq!(closeness("", "abc"), 0.0);
        assert_eq!(closeness("", ""), 1.0);
        assert!(closeness("s-t-a-e", "s-t-a-r") > closeness("c-a-r-d", "s-t-a-r"));
        // Symmetric.
        assert_eq!(closeness("flaw", "lawn"), closeness("lawn", "flaw"));
        assert!((closeness("flaw", "lawn") - 0.5).abs() < 1e-12);
    }

    #[test]
    fn correctness_first_then_form() {
        assert_eq!(grade("chat.", "chat."), 1.0);
        assert_eq!(grade(" Chat ", "chat."), 1.0);
        assert_eq!(grade("chat. And more words here.", "chat."), 0.6);
        assert_eq!(grade("chat. the cat the cat the cat", "chat."), 0.4);
        assert_eq!(grade("chien.", "chat."), 0.1);
        assert_eq!(grade("chats", "chat."), 0.1);
        assert_eq!(grade("", "chat."), 0.0);
        assert_eq!(
            grade("no no no no no no no no no no no no no no no no", "chat."),
            0.0
        );
    }
}
