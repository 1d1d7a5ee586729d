//! Percentiles, the printed table, the JSON file and the latency CDF plot.

use std::path::Path;

use plotters::prelude::*;

/// Sorted latency samples in microseconds.
pub struct Latency {
    pub label: String,
    pub us: Vec<f64>,
}

impl Latency {
    /// One-way figures from round-trip nanoseconds (RTT / 2).
    pub fn one_way(label: &str, rtt_ns: &[u64]) -> Self {
        let mut us: Vec<f64> = rtt_ns.iter().map(|&ns| ns as f64 / 2000.0).collect();
        us.sort_by(f64::total_cmp);
        Self {
            label: label.to_owned(),
            us,
        }
    }

    pub fn p(&self, q: f64) -> f64 {
        if self.us.is_empty() {
            return f64::NAN;
        }
        let at = ((self.us.len() - 1) as f64 * q).round() as usize;
        self.us[at]
    }
}

pub fn row(name: &str, value: f64, unit: &str, baseline: Option<f64>) {
    let ratio = baseline.map_or(String::new(), |b| format!("{:.2}x", value / b));
    println!("  {name:<44} {value:>12.1} {unit:<8} {ratio}");
}

/// Writes a CDF of the latency sets as an SVG (text is drawn by the viewer: no fonts needed).
pub fn plot_cdf(path: &Path, sets: &[&Latency]) -> Result<(), Box<dyn std::error::Error>> {
    let max = sets.iter().map(|s| s.p(0.99)).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "one-way latency CDF (µs), loopback, 2 nodes",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("µs")
        .y_desc("fraction of samples")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (set, color) in sets.iter().zip(colors) {
        let n = set.us.len().max(1) as f64;
        let points = set
            .us
            .iter()
            .enumerate()
            .step_by((set.us.len() / 400).max(1));
        let series = points.map(|(i, &us)| (us.min(max), (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))?
            .label(set.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
