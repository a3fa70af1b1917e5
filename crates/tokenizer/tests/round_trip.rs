//! Encoding then decoding gives back any UTF-8 input.

use ember_tokenizer::{BpeConfig, Tokenizer};
use proptest::prelude::*;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let texts = [
            "It was the best of times, it was the worst of times.",
            "无监督训练。 Translate into English: 无监督训练。 Translation: Unsupervised training.",
            "Café, naïve, über, 🙂🚀, tabs\tand   runs of   spaces\n\n\n",
        ];
        Tokenizer::train_from_texts(
            &texts,
            &BpeConfig {
                vocab_size: 400,
                ..Default::default()
            },
        )
        .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_utf8_round_trips(text in any::<String>()) {
        let ids = tokenizer().encode(&text).unwrap();
        prop_assert_eq!(tokenizer().decode(&ids).unwrap(), text);
    }

    #[test]
    fn cjk_emoji_and_whitespace_round_trip(
        text in "[\\u{4e00}-\\u{9fff}\\u{1f600}-\\u{1f64f} \\t\\n\\r a-zé]{0,64}"
    ) {
        let ids = tokenizer().encode(&text).unwrap();
        prop_assert_eq!(tokenizer().decode(&ids).unwrap(), text);
    }
}

#[test]
fn fixed_hard_cases_round_trip() {
    for text in [
        "",
        " ",
        "\n",
        "  leading",
        "trailing  ",
        "\u{0}",
        "a\r\nb",
        "👩‍👩‍👧‍👦",
        "無監督",
    ] {
        let ids = tokenizer().encode(text).unwrap();
        assert_eq!(tokenizer().decode(&ids).unwrap(), text, "{ids:?}");
    }
}
