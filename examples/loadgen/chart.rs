//! The sweep's chart: room throughput and p99 latency against the number of peers, Palaver and
//! the baseline, side by side in one SVG.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

pub(crate) fn draw(path: &Path, points: &[Value]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let series = |net: &str, field: &str| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|p| Some((p["peers"].as_f64()?, p[net][field].as_f64()?)))
            .collect()
    };
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(500);
    // Each legend in the corner its lines leave free: throughput falls with peers, latency rises.
    for (area, field, title, unit, legend) in [
        (
            &left,
            "msgs_per_s",
            "Room throughput",
            "messages/s",
            SeriesLabelPosition::UpperRight,
        ),
        (
            &right,
            "p99_ms",
            "Room p99 latency",
            "ms",
            SeriesLabelPosition::LowerRight,
        ),
    ] {
        let palaver = series("palaver", field);
        let baseline = series("baseline", field);
        let max_x = palaver
            .iter()
            .chain(&baseline)
            .map(|p| p.0)
            .fold(2.0, f64::max);
        let max_y = palaver
            .iter()
            .chain(&baseline)
            .map(|p| p.1)
            .fold(1.0, f64::max)
            * 1.15;
        // Logarithmic: the two networks differ by more than an order of magnitude at 2 peers.
        let min_y = palaver
            .iter()
            .chain(&baseline)
            .map(|p| p.1)
            .fold(max_y, f64::min)
            .max(0.1)
            / 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} (log scale)"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_x + 1.0, (min_y..max_y * 1.5).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("peers")
            .y_desc(unit)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (data, name, color) in [
            (palaver, "Palaver", RED),
            (baseline, "libp2p gossipsub", BLUE),
        ] {
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(legend)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
