//! The report's SVG charts: latency distributions, throughput and memory per socket.

use std::path::Path;

use crate::measure::*;

/// One line chart: titled, with axes named, a line per series and a legend.
pub struct LineChart<'a> {
    file: &'static str,
    caption: &'a str,
    x: (&'a str, f64),
    y: (&'a str, f64),
    series: Vec<(String, Vec<(f64, f64)>)>,
    /// A horizontal reference line, labelled.
    reference: Option<(&'a str, f64)>,
}

impl LineChart<'_> {
    /// Draws `<dir>/<file>` and returns the file name.
    fn draw(self, dir: &Path) -> anyhow::Result<&'static str> {
        use plotters::prelude::*;
        let path = dir.join(self.file);
        let root = SVGBackend::new(&path, (800, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..self.x.1, 0f64..self.y.1)?;
        chart
            .configure_mesh()
            .x_desc(self.x.0)
            .y_desc(self.y.0)
            .draw()?;
        for (index, (label, points)) in self.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if let Some((label, value)) = self.reference {
            chart
                .draw_series(LineSeries::new([(0.0, value), (self.x.1, value)], RED))?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(self.file)
    }
}

/// `latency.svg`: the latency distribution (percentile against milliseconds) of each run
/// that recorded its latencies.
pub fn latency_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = [
        ("ingest (half rate)", "ingest"),
        ("end to end ~500/s", "e2e-500"),
        ("end to end ~1,000/s", "e2e-1000"),
    ]
    .into_iter()
    .filter_map(|(label, part)| {
        let mut latencies = values(&read(dir, part)?, "latencies_ms");
        latencies.sort_by(f64::total_cmp);
        let n = latencies.len() as f64;
        let points = latencies
            .iter()
            .enumerate()
            .step_by((latencies.len() / 500).max(1))
            .map(|(i, ms)| (*ms, 100.0 * (i as f64 + 1.0) / n))
            .filter(|(_, percentile)| *percentile <= 99.9)
            .collect::<Vec<_>>();
        (!points.is_empty()).then(|| (label.to_owned(), points))
    })
    .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    LineChart {
        file: "latency.svg",
        caption: "Latency distribution (to the 99.9th percentile)",
        x: ("milliseconds", max * 1.05),
        y: ("percentile", 100.0),
        series,
        reference: None,
    }
    .draw(dir)
    .map(Some)
}

/// `throughput.svg`: confirmed webhooks each second while ingest was saturated, beside
/// the broker's limit.
pub fn throughput_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let Some(ingest) = read(dir, "ingest") else {
        return Ok(None);
    };
    let per_second = values(&ingest, "saturation_series");
    if per_second.is_empty() {
        return Ok(None);
    }
    let limit = read(dir, "broker")
        .and_then(|b| b["per_second"].as_f64())
        .unwrap_or_default();
    let top = per_second.iter().fold(limit, |a, b| a.max(*b)) * 1.1;
    let points = per_second
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 + 1.0, *v))
        .collect();
    LineChart {
        file: "throughput.svg",
        caption: "Ingest at saturation: confirmed webhooks per second",
        x: ("seconds", per_second.len() as f64),
        y: ("webhooks/s", top.max(1.0)),
        series: vec![("ingest".into(), points)],
        reference: (limit > 0.0).then_some(("broker limit", limit)),
    }
    .draw(dir)
    .map(Some)
}

/// `memory.svg`: memory per connection against the number of connections, the notifier
/// beside nchan.
pub fn memory_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let series: Vec<(String, Vec<(f64, f64)>)> =
        [("notifier", "fanout"), ("nginx + nchan", "fanout-nchan")]
            .into_iter()
            .filter_map(|(label, part)| {
                let points: Vec<(f64, f64)> = read(dir, part)?["growth"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p["sockets"].as_f64()?,
                            p["bytes_per_socket"].as_f64()? / 1000.0,
                        ))
                    })
                    .collect();
                (!points.is_empty()).then(|| (label.to_owned(), points))
            })
            .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let bound = |axis: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().map(axis))
            .fold(1.0, f64::max)
    };
    let (max_x, max_y) = (bound(|p| p.0), bound(|p| p.1));
    LineChart {
        file: "memory.svg",
        caption: "Memory per connection against connections",
        x: ("open WebSockets", max_x * 1.02),
        y: ("KB per connection", max_y * 1.2),
        series,
        reference: None,
    }
    .draw(dir)
    .map(Some)
}
