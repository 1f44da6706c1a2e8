"""`testlab host list` on both databases: its columns say what they hold."""

from __future__ import annotations


def cells(line: str, bar: str) -> list[str]:
    return [cell.strip() for cell in line.split(bar)[1:-1]]


def test_host_list_headers_name_the_limits(testlab, lab_file):
    testlab("lab", "apply", lab_file)
    lines = testlab("host", "list").output.splitlines()
    # A narrow terminal wraps long headers over several lines: join each column's pieces.
    header_lines = [cells(line, "┃") for line in lines if line.startswith("┃")]
    headers = [" ".join(filter(None, pieces)) for pieces in zip(*header_lines, strict=True)]
    # The last three columns are the host's limits, not counts of VMs in those states.
    assert headers[-3:] == ["max active", "max running", "max reverting"], headers
    h1 = next(cells(line, "│") for line in lines if " h1 " in line)
    assert h1[-3:] == ["2", "2", "1"]
