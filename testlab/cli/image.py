"""`testlab image ...`: guest images for libvirt hosts."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    cli.add_command(image)


@click.group()
def image() -> None:
    """Guest images: a minimal Debian with the testlab agent, for `testlab vm provision`."""


@image.command("build")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of the image (replaced when the image is rebuilt).",
)
@click.option("--suite", default="bookworm", show_default=True, help="Debian release.")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True, help="Debian mirror.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Token the agent expects (default: the image's current token, or a new random one).",
)
@click.option("--rebuild", is_flag=True, help="Build even if the image is up to date (new package versions).")
def image_build(out: Path, suite: str, mirror: str, token_file: Path | None, rebuild: bool) -> None:
    """Build a guest image into OUT (needs root, mmdebstrap, e2fsprogs, qemu-utils); does nothing if the
    image there was built from the same recipe, token and testlab version."""
    from testlab.image import Recipe, build_image

    built, fresh = build_image(
        out,
        recipe=Recipe(suite=suite, mirror=mirror),
        token_file=token_file,
        rebuild=rebuild,
        progress=lambda message: click.echo(f"image: {message}", err=True),
    )
    state = f"built in {built.manifest.get('build_seconds')} s" if fresh else "up to date"
    click.echo(f"image {state}: {built.directory} (key {built.key[:12]}, kernel {built.kernel_version})")
    click.echo(f"agent token file: {built.token_file}")
