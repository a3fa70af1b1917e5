//! Line charts as SVG files, drawn with `plotters` (its SVG backend needs no font or system
//! library: the text is SVG text, laid out by whatever shows the picture).

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// Points (x, y), in x order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A named line.
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// A chart: a title, an x-axis label and lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Above the chart.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const PANEL: (u32, u32) = (560, 360);

/// The padded range of `values`, a unit wide around a single value.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    }
}

/// An x tick's label: whole numbers (steps, rollout batches) without decimals.
fn tick(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

type Drawn<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
) -> Drawn<()>
where
    DB::ErrorType: 'static,
{
    let finite = |s: &Series| {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect::<Vec<_>>()
    };
    let lines = chart.series.iter().map(finite).collect::<Vec<_>>();
    let (x0, x1) = bounds(lines.iter().flatten().map(|p| p.0));
    let (y0, y1) = bounds(lines.iter().flatten().map(|p| p.1));
    let mut plot = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    plot.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .x_label_formatter(&|x| tick(*x))
        .light_line_style(WHITE)
        .draw()?;
    if lines.iter().all(Vec::is_empty) {
        plot.draw_series(std::iter::once(Text::new(
            "no data",
            (x0 + 0.1 * (x1 - x0), 0.5 * (y0 + y1)),
            ("sans-serif", 14),
        )))?;
        return Ok(());
    }
    for (k, (series, points)) in chart.series.iter().zip(lines).enumerate() {
        let color = Palette99::pick(k).to_rgba();
        plot.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(series.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws `charts` in a grid of `columns` into one SVG document.
///
/// # Errors
/// The drawing backend's error, as text.
pub(crate) fn render_svg(charts: &[Chart], columns: usize) -> std::result::Result<String, String> {
    let columns = columns.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(columns).max(1);
    let mut svg = String::new();
    {
        let size = (PANEL.0 * columns as u32, PANEL.1 * rows as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((rows, columns));
        for (panel, chart) in panels.iter().zip(charts) {
            draw(panel, chart).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Draws `charts` in a grid of `columns` and writes the SVG file atomically.
///
/// # Errors
/// The drawing fails or the file cannot be written.
pub fn write_svg(path: &Path, charts: &[Chart], columns: usize) -> Result<()> {
    let svg = render_svg(charts, columns).map_err(|reason| Error::Plot {
        path: path.to_path_buf(),
        reason,
    })?;
    ember_tokenizer::write_atomically(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The points of the series' lines (drawn 2 wide; the axes' are 1 wide).
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.match_indices("<polyline")
            .map(|(at, _)| &svg[at..at + svg[at..].find("/>").unwrap()])
            .filter(|element| element.contains("stroke-width=\"2\""))
            .map(|rest| {
                let start = rest.find("points=\"").unwrap() + 8;
                let end = start + rest[start..].find('"').unwrap();
                rest[start..end]
                    .split_whitespace()
                    .map(|pair| {
                        let (x, y) = pair.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_series_becomes_a_line_through_its_points_with_labelled_axes() {
        let falling = Series::new(
            "train",
            (0..50)
                .map(|i| (f64::from(i), (-f64::from(i) / 10.0).exp()))
                .collect(),
        );
        let chart = Chart {
            title: "pretraining loss".into(),
            x_label: "step".into(),
            series: vec![
                falling,
                Series::new("val", vec![(0.0, 1.0), (25.0, f64::NAN), (49.0, 0.1)]),
            ],
        };
        let svg = render_svg(&[chart.clone(), chart.clone(), chart], 2).unwrap();
        assert!(svg.contains("width=\"1120\"") && svg.contains("height=\"720\""));
        for text in ["pretraining loss", "step", "train", "val", "10", "40"] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "{text} is written"
            );
        }
        let lines = polylines(&svg);
        // Every chart draws both series (its NaN point skipped) and the legend's two samples.
        let long = lines.iter().filter(|l| l.len() == 50).collect::<Vec<_>>();
        assert_eq!(long.len(), 3, "one 50-point line per chart");
        let short = lines.iter().filter(|l| l.len() == 2).count();
        assert!(short >= 3 * 3, "the val line and the legend samples");
        // The falling curve falls on the page: y grows downwards in SVG.
        let first = long[0];
        assert!(first
            .windows(2)
            .all(|w| w[1].0 > w[0].0 && w[1].1 >= w[0].1));
        assert!(first[49].1 - first[0].1 > 200.0, "{first:?}");
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart {
            title: "nothing".into(),
            x_label: "step".into(),
            series: vec![Series::new("x", vec![(1.0, f64::NAN)])],
        };
        let svg = render_svg(&[chart], 1).unwrap();
        assert!(svg.contains(">\nno data\n</text>"));
        assert!(polylines(&svg).is_empty());
    }
}
