"""Source rows to Dataverse columns: the mapping models (``spec``) and the mapper (``mapper``)."""
