//! Writes docs/REFERENCE.md from the code: `cargo run -p palaver-node --example reference`.

fn main() -> std::io::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(palaver_node::reference::PATH);
    std::fs::write(&path, palaver_node::reference::markdown())?;
    println!("wrote {}", path.display());
    Ok(())
}
