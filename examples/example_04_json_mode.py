"""04: structured output: text.format with a JSON schema, parsed into a pydantic model."""

from typing import Literal

from pydantic import BaseModel, Field

from _client import MODEL, client


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    continent: Literal["Africa", "America", "Asia", "Europe", "Oceania"]
    is_capital: bool


response = client().responses.parse(model=MODEL, input="Give me facts about Paris as JSON.",
                                     text_format=City, temperature=0, max_output_tokens=120)
city = response.output_parsed
print(type(city).__name__, city.model_dump())
