"""Provenance of every image Persona generates or enhances: an invisible watermark with a
documented payload (``payload``, ``watermark``), Persona's record in the file's metadata
(``record``), C2PA content credentials signed with the user's certificate
(``credentials``), the one way outputs are saved (``save``) and how a file is checked
(``verify``). Nothing here sends anything anywhere.

May import: ``core``."""
