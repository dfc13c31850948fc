"""04: structured output: text.format with a JSON schema, parsed into a pydantic model."""

from pydantic import BaseModel

from _client import MODEL, client


class City(BaseModel):
    name: str
    country: str
    population_millions: int


response = client().responses.parse(model=MODEL, input="Give me facts about Paris as JSON.",
                                     text_format=City, temperature=0, max_output_tokens=80)
city = response.output_parsed
print(type(city).__name__, city.model_dump())
