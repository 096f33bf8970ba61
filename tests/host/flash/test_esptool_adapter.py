"""One test per assumption workshop.esptool_adapter makes about esptool (and pyserial).

If an esptool upgrade breaks one, it fails here by name (pyproject pins the tested range)."""

from __future__ import annotations

import os
import pty
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from flash_peers import image_bytes
from workshop import esptool_adapter as adapter

REPO = Path(__file__).resolve().parents[3]


def test_the_tested_esptool_is_installed():
    import esptool

    assert esptool.__version__.startswith("5.6"), esptool.__version__


def test_output_goes_to_the_threads_log_through_the_public_set_logger(mocks, tmp_path, capfd):
    from esptool import reset

    device = mocks.start("esp32")
    log = tmp_path / "one.log"
    reset.ResetStrategy.print_once.already_printed = False        # one-shot per process: arm it again
    with adapter.esptool_session(log):
        esp = adapter.connect(device.port)
        adapter.close(esp)
    out, err = capfd.readouterr()
    assert "Detecting chip type" in log.read_text()
    assert "Detecting chip type" not in out + err
    # The reset strategy's one-shot warning (PTYs have no RTS/DTR) went to the log too.
    assert "Chip was NOT reset" in log.read_text() and "Chip was NOT reset" not in out + err


def test_a_silent_port_is_no_answer_from_esptools_failed_to_connect_message():
    master, slave = pty.openpty()
    try:
        with pytest.raises(adapter.NoAnswer, match="no answer from a bootloader"):
            adapter.connect(os.ttyname(slave), connect_attempts=1)
    finally:
        os.close(master)
        os.close(slave)


def test_a_mismatch_is_verify_failed_from_esptools_verification_failed_message(mocks):
    from esptool.cmds import attach_flash, write_flash

    device = mocks.start("esp32")
    written, other = image_bytes(8192, 1), image_bytes(8192, 2)
    with adapter.esptool_session(None):
        esp = adapter.run_stub(adapter.connect(device.port), "2")
        try:
            attach_flash(esp)
            write_flash(esp, [(0x1000, written)])
            adapter.verify(esp, [(0x1000, written)], "keep", "A")          # the same bytes: no error
            with pytest.raises(adapter.VerifyFailed, match="differs from B"):
                adapter.verify(esp, [(0x1000, other)], "keep", "B")
        finally:
            adapter.close(esp)


def test_rom_only_loaders_say_so_by_type(mocks):
    device = mocks.start("esp8266")
    with adapter.esptool_session(None):
        esp = adapter.connect(device.port)
        try:
            assert adapter.change_baud(esp, 460800) is False        # NotImplementedInROMError
        finally:
            adapter.close(esp)


def test_the_stub_version_is_chosen_per_attempt(mocks, tmp_path):
    device = mocks.start("esp32")
    log = tmp_path / "stub.log"
    with adapter.esptool_session(log):
        esp = adapter.connect(device.port)
        try:
            assert adapter.stub_size(esp, "1") != adapter.stub_size(esp, "2") > 0
            assert adapter.run_stub(esp, "1").IS_STUB
        finally:
            adapter.close(esp)
    assert "legacy stub flasher" in log.read_text()
    assert os.environ.get("ESPTOOL_STUB_VERSION") is None


def test_hex_dumps_of_untraced_packets_are_skipped():
    adapter._install_logger()
    from esptool import loader

    assert getattr(loader.HexFormatter, "_workshop_short", False)
    assert str(loader.HexFormatter(b"\x00" * 100)) == "<100 bytes>"


def test_a_port_held_by_another_program_is_port_busy_by_errno():
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    holder = serial.Serial(path, exclusive=True)
    try:
        with pytest.raises(adapter.PortBusy, match="port busy: held by another program"):
            adapter.open_port(path)
    finally:
        holder.close()
        os.close(master)
        os.close(slave)
    with pytest.raises(adapter.PortUnavailable, match="no such device"):
        adapter.open_port("/dev/does-not-exist")


def test_abort_port_wakes_a_thread_blocked_in_read():
    master, slave = pty.openpty()
    try:
        ser = adapter.open_port(os.ttyname(slave), timeout=None)          # read() would wait for ever
        woke = threading.Event()

        def reader():
            try:
                ser.read(1)
            except Exception:  # noqa: BLE001 - either way it returned
                pass
            woke.set()

        threading.Thread(target=reader, daemon=True).start()
        time.sleep(0.2)
        assert not woke.is_set()
        t0 = time.monotonic()
        adapter.abort_port(ser)
        assert woke.wait(1.0) and time.monotonic() - t0 < 0.5
        assert not ser.is_open
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("chip", ["esp8266", "esp32"])
def test_an_images_flash_size_is_set_with_esptools_image_classes(chip):
    # with_header_flash_size relies on the chip class's BOOTLOADER_IMAGE reading and verify()ing
    # an image, and, for the ESP32 family, on append_digest / data_length / SHA256_DIGEST_LEN to
    # redo the digest. An image esptool made itself must come back valid with the new size.
    import io

    from esptool.targets import CHIP_DEFS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "release"))
    from placeholders import esp_image

    rom = CHIP_DEFS[chip]
    built = esp_image(chip, "1MB")
    out = adapter.with_header_flash_size(built, rom, int(rom.FLASH_SIZES["4MB"]))
    assert out[3] >> 4 == int(rom.FLASH_SIZES["4MB"]) >> 4 and len(out) == len(built)
    image = rom.BOOTLOADER_IMAGE(io.BytesIO(out))
    image.verify()                      # the ESP32 digest was redone (verify checks it)
    assert out != built and adapter.with_header_flash_size(b"\xe9 not an image", rom, 0x30) == b"\xe9 not an image"


def test_the_chip_an_image_is_for_is_read_with_esptools_image_classes():
    # image_chip relies on bin_image.LoadFirmwareImage reading an image for a chip, the ESP32
    # family's extended header carrying `chip_id` (one layout for every chip in it) and each chip
    # class's IMAGE_CHIP_ID (ESP8266's has none). Images esptool made itself must read back as
    # theirs, against every expected chip; bytes that are no image (or cut short) as None.
    from esptool.targets import CHIP_DEFS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "release"))
    from placeholders import esp_image

    assert getattr(CHIP_DEFS["esp8266"], "IMAGE_CHIP_ID", None) is None
    assert len({CHIP_DEFS[c].IMAGE_CHIP_ID for c in CHIP_DEFS if c != "esp8266"}) == len(CHIP_DEFS) - 1
    chips = ["esp8266", "esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6", "esp32p4"]
    for built in chips:
        data = esp_image(built, "4MB", after=b"\xff" * 0x7000 + b"partition table and app")
        assert [adapter.image_chip(data, expected) for expected in chips] == [built] * len(chips), built
        assert adapter.image_chip(data[:40], built) is None                 # a download cut short
    for not_firmware in (b"", b"<!DOCTYPE html>" * 64, b"\xff" * 4096):
        assert [adapter.image_chip(not_firmware, c) for c in chips] == [None] * len(chips)


def test_a_lost_link_mid_write_raises_at_once_with_one_write_attempt(mocks):
    # single_write_attempt relies on ESPLoader.WRITE_FLASH_ATTEMPTS, which esptool's write_flash
    # reads: more than one (its default) closes our port, sleeps a second per try and reopens it
    # to reconnect and upload the stub again, inside our write stage's time box.
    from esptool.cmds import attach_flash, write_flash
    from esptool.loader import ESPLoader

    assert ESPLoader.WRITE_FLASH_ATTEMPTS > 1
    device = mocks.start("esp32")

    def unplug(done: int, total: int, _: str) -> None:
        if done * 4 >= total and device.alive:
            device.kill()

    with adapter.esptool_session(None, on_progress=unplug) as log:
        esp = adapter.run_stub(adapter.connect(device.port), "2")
        try:
            attach_flash(esp)
            adapter.single_write_attempt(esp)
            t0 = time.monotonic()
            with pytest.raises(serial.SerialException):
                write_flash(esp, [(0x1000, image_bytes(256 * 1024, 3))])
            assert time.monotonic() - t0 < 1.0
            assert "Lost connection, retrying" not in log.getvalue()
        finally:
            adapter.close(esp)
