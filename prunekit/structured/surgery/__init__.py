"""Surgery: physical removal (``slim``), kept-index plans (``plan``), validation
(``exactness``, ``fallback``), save/load of slim models (``saveload``) and deployment
transforms (``deploy``)."""
