"""The machinery that executes the chapters and renders the book.

It owns :mod:`~flatness.book.build` (executing chapters with papermill, the status page,
rendering with Jupyter Book 1), :mod:`~flatness.book.parameters` (chapter parameters read as
papermill reads them) and :mod:`~flatness.book.availability` (which of a chapter's runs are at
hand, and the note heading a page whose runs are not all published).

It may import every layer below it: the shared leaves, hessian, data and models,
:mod:`flatness.training`, :mod:`flatness.results`, :mod:`flatness.analysis` and
:mod:`flatness.chapters`, whose modules it reads, executes and asks for their grids. Only the
command line (:mod:`flatness.cli`) imports it.
"""
