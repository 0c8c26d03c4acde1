fn main() -> anyhow::Result<()> {
    pigment::cli::main()
}
