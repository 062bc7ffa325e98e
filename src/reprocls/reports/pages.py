"""Which page a folder gets: a registry of page writers, each with the test that recognises its folder, so
`reprocls report FOLDER` picks by what the folder holds and a new kind of folder is one registration."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from reprocls import run_layout as layout
from reprocls.registry import Registry
from reprocls.reports.nas_page import write_nas_page
from reprocls.reports.pretrain_page import write_pretrain_pages
from reprocls.reports.reproduction_page import write_reproduction_page
from reprocls.reports.run_page import write_run_pages
from reprocls.reports.study_page import write_study_page

PageWriter = Callable[[Path], Path]
# info: (what marks the folder, how the folder is described to a user)
PAGES: Registry[PageWriter] = Registry("report page")
PAGES.register(write_run_pages, name="run", info=(lambda folder: layout.is_run(folder) and not
                                                  layout.is_pretraining_run(folder), "a run folder (results.json)"))
PAGES.register(write_pretrain_pages, name="pretrain", info=(layout.is_pretraining_run, "a `reprocls pretrain` run"))
PAGES.register(write_nas_page, name="nas", info=(layout.is_nas, "an architecture search (nas.json)"))
PAGES.register(write_study_page, name="study", info=(layout.is_study, "a study folder (study.json)"))
PAGES.register(write_reproduction_page, name="reproduction",
               info=(layout.is_reproduction, "a reproduction folder (reproduction.json)"))


def folder_kinds() -> str:
    """The kinds of folder a page exists for, in words."""
    kinds = [PAGES.info(name)[1] for name in PAGES.in_order()]
    return ", ".join(kinds[:-1]) + " or " + kinds[-1]


def page_kind(folder: Path) -> str:
    """The name of the page a folder gets; FileNotFoundError naming every kind when it is none of them."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass {folder_kinds()}")
    for name in PAGES.in_order():
        marks, _ = PAGES.info(name)
        if marks(folder):
            return name
    raise FileNotFoundError(f"{folder} holds none of {layout.RESULTS}, {layout.STUDY_JSON} or {layout.REPRODUCTION_JSON}; "
                            f"pass {folder_kinds()} (a run that is still training has no {layout.RESULTS} yet)")


def write_page(folder: str | Path) -> Path:
    """(Re)write the page of a run, study or reproduction folder, chosen by what the folder holds."""
    folder = Path(folder)
    return PAGES.get(page_kind(folder))(folder)
