//! Line charts as PNG files, with no font or system library: an 8×8 bitmap font, lines drawn
//! pixel by pixel, the `png` crate to encode.

use std::path::Path;

use anyhow::Context as _;
use font8x8::UnicodeFonts as _;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// Points (x, y), in x order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A chart: a title, axis labels and lines.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Above the chart.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const PANEL_W: usize = 560;
const PANEL_H: usize = 360;
const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];

struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    fn line(&mut self, from: (i64, i64), to: (i64, i64), color: [u8; 3], thick: bool) {
        let (mut x, mut y) = from;
        let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
        let (sx, sy) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x, y, color);
            if thick {
                self.set(x + 1, y, color);
                self.set(x, y + 1, color);
            }
            if (x, y) == to {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y); characters outside basic Latin show as `?`.
    fn text(&mut self, x: i64, y: i64, text: &str, color: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(c)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.set(x + i as i64 * 8 + col, y + row as i64, color);
                    }
                }
            }
        }
    }
}

fn text_width(text: &str) -> i64 {
    8 * text.chars().count() as i64
}

/// A short label for a tick value.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(0.01..10_000.0).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn draw_chart(canvas: &mut Canvas, chart: &Chart, left: i64, top: i64) {
    let black = [0, 0, 0];
    let grey = [220, 220, 220];
    let (ml, mr, mt, mb) = (70i64, 16i64, 28i64, 40i64);
    let (x0, y0) = (left + ml, top + mt);
    let (x1, y1) = (left + PANEL_W as i64 - mr, top + PANEL_H as i64 - mb);
    let title_x = left + (PANEL_W as i64 - text_width(&chart.title)) / 2;
    canvas.text(title_x, top + 8, &chart.title, black);
    let points = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect::<Vec<_>>();
    if points.is_empty() {
        canvas.text(x0 + 10, y0 + 10, "no data", black);
        return;
    }
    let bounds = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        }
    };
    let (xmin, xmax) = bounds(points.iter().map(|p| p.0).collect());
    let (ymin, ymax) = bounds(points.iter().map(|p| p.1).collect());
    let px = |x: f64| x0 + ((x - xmin) / (xmax - xmin) * (x1 - x0) as f64).round() as i64;
    let py = |y: f64| y1 - ((y - ymin) / (ymax - ymin) * (y1 - y0) as f64).round() as i64;
    for i in 0..=4 {
        let fy = ymin + (ymax - ymin) * f64::from(i) / 4.0;
        let y = py(fy);
        canvas.line((x0, y), (x1, y), grey, false);
        let label = tick_label(fy);
        canvas.text(x0 - 6 - text_width(&label), y - 4, &label, black);
        let fx = xmin + (xmax - xmin) * f64::from(i) / 4.0;
        let x = px(fx);
        canvas.line((x, y1), (x, y1 + 4), black, false);
        let label = tick_label(fx);
        canvas.text(x - text_width(&label) / 2, y1 + 8, &label, black);
    }
    canvas.line((x0, y0), (x0, y1), black, false);
    canvas.line((x0, y1), (x1, y1), black, false);
    canvas.text(
        (x0 + x1 - text_width(&chart.x_label)) / 2,
        y1 + 22,
        &chart.x_label,
        black,
    );
    for (k, series) in chart.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut previous = None;
        for &(x, y) in series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let point = (px(x), py(y));
            if let Some(p) = previous {
                canvas.line(p, point, color, true);
            } else if series.points.len() == 1 {
                canvas.line(point, point, color, true);
            }
            previous = Some(point);
        }
        // Legend, top right inside the plot.
        let ly = y0 + 6 + 12 * k as i64;
        let lx = x1 - 8 - text_width(&series.name) - 20;
        canvas.line((lx, ly + 4), (lx + 14, ly + 4), color, true);
        canvas.text(lx + 18, ly, &series.name, color);
    }
}

/// Draws `charts` in a grid of `columns` and writes the PNG atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_png(path: &Path, charts: &[Chart], columns: usize) -> anyhow::Result<()> {
    let columns = columns.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(columns).max(1);
    let mut canvas = Canvas::new(PANEL_W * columns, PANEL_H * rows);
    for (i, chart) in charts.iter().enumerate() {
        let (col, row) = (i % columns, i / columns);
        draw_chart(
            &mut canvas,
            chart,
            (col * PANEL_W) as i64,
            (row * PANEL_H) as i64,
        );
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, canvas.width as u32, canvas.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("encoding a PNG")?;
        writer
            .write_image_data(&canvas.pixels)
            .context("encoding a PNG")?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    ember_tokenizer::write_atomically(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_becomes_a_png_of_the_grid_size() {
        let chart = Chart {
            title: "loss".into(),
            x_label: "step".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: (0..50)
                        .map(|i| (f64::from(i), (-f64::from(i) / 10.0).exp()))
                        .collect(),
                },
                Series {
                    name: "val".into(),
                    points: vec![(0.0, 1.0), (25.0, f64::NAN), (49.0, 0.1)],
                },
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plots/loss.png");
        write_png(&path, &[chart.clone(), chart.clone(), chart], 2).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!(
            (info.width, info.height),
            (2 * PANEL_W as u32, 2 * PANEL_H as u32)
        );
        assert_eq!(tick_label(0.5), "0.500");
        assert_eq!(tick_label(12345.0), "1.2e4");
    }
}
